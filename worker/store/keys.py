"""Names of every Redis key the product uses, in one place.

A reconcile key names one object of one application: a ``ReconcileKey``, whose text (in Redis
and in Celery's messages) is ``"<app> user <id>"`` or ``"<app> group <id>"``. Ids never hold
whitespace (the event contract refuses it), so a space is a safe separator. The text is made
and read here only (``str(key)``, ``ReconcileKey.parse``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "prov:"

Kind = Literal["user", "group"]

# Producers and ingest
# The duplicate filter, bounded by the journal's age and size limits (see store_batch.lua)
RECENT_EVENTS = PREFIX + "ev:recent"  # ZSET accepted event id -> acceptance time (ms)
JOURNAL_MAX_AGE = PREFIX + "journal:max_age_ms"  # retention by age, set by journal.trim()
PENDING_BATCHES = PREFIX + "ingest:pending"  # ZSET batch id -> publish time (ms)
RESEND_BATCHES = PREFIX + "ingest:resend"  # re-send schedule of pending batches (sweep_batches.lua)
PARKED_BATCHES = PREFIX + "ingest:parked"  # HASH batch id -> reason (a poison batch)
COUNTERS = PREFIX + "counters"  # HASH published, applied, ignored, ...
IGNORED_LOG = PREFIX + "ignored"  # capped LIST of events ignored after a deletion


def batch(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


# Workqueue: read and written by worker/queue/workqueue.py (and its Lua scripts) only; others
# ask the Workqueue. Each holds reconcile keys' text.
WQ_DIRTY = PREFIX + "wq:dirty"  # ZSET key -> when its stale clock starts (ms, see sweep.lua)
WQ_RESEND = PREFIX + "wq:resend:"  # + key: STRING "<score> <first sent>" of its re-sends
WQ_OWNER = PREFIX + "wq:owner"  # HASH key -> fencing token of its holder
WQ_FENCE = PREFIX + "wq:fence"  # HASH key -> last fencing token handed out (grows per claim)
WQ_LEASES = PREFIX + "wq:leases"  # ZSET key -> lease expiry (ms)
WQ_DELAYED = PREFIX + "wq:delayed"  # ZSET key -> time it may run again (ms)
WQ_PARKED = PREFIX + "wq:parked"  # HASH key -> reason (a permanent failure)
WQ_ATTEMPTS = PREFIX + "wq:attempts"  # HASH key -> consecutive transient failures
WQ_DEFERRED = PREFIX + "wq:deferred"  # HASH group key -> since when it waits for members
WQ_SWEEP_LOCK = PREFIX + "wq:sweep"  # STRING: the worker whose sweeper runs now

# Applications
APPS = PREFIX + "apps"  # SET of configured app ids
APPS_ACTIVE = PREFIX + "apps:active"  # SET of app ids whose integration is active


def app(app_id: str) -> str:
    return f"{PREFIX}app:{app_id}"


def app_learned(app_id: str) -> str:
    """HASH of what the pool learned about the app's SCIM server (see learned.py)."""
    return f"{PREFIX}app:{app_id}:learned"


def app_bulk(app_id: str) -> str:
    """HASH of the app's Bulk requests: ``requests``, ``operations``, ``failed`` (operations)."""
    return f"{PREFIX}app:{app_id}:bulk"


BULK_FORMS = ("POST /Users", "PUT /Users", "PATCH /Users", "POST /Groups", "PUT /Groups",
              "PATCH /Groups")  # fmt: skip
"""The forms of write a Bulk request carries, each checked until the app holds one as sent."""


def app_bulk_check(app_id: str, form: str) -> str:
    """STRING, with a TTL: a write of ``form`` (``POST /Groups``) is being read back after its
    Bulk request (``sync/bulk.py``); one at a time per app and form, pool-wide."""
    return f"{PREFIX}app:{app_id}:bulk:check:{form}"


def app_bulk_unchecked(app_id: str, form: str) -> str:
    """SET of ``kind:id``: objects whose Bulk write of ``form`` was taken as sent while another
    was being read back; read back in turn if that one was not held as sent."""
    return f"{PREFIX}app:{app_id}:bulk:unchecked:{form}"


def app_token(app_id: str) -> str:
    return f"{PREFIX}app:{app_id}:token"


def mirror(app_id: str, kind: Kind) -> str:
    """HASH directory id -> JSON of what the app holds for it (see mirror.py)."""
    return f"{PREFIX}mirror:{app_id}:{kind}s"


def mirror_absent(app_id: str, kind: Kind) -> str:
    """SET of directory ids whose lookup in the app found nothing (create comes next)."""
    return f"{PREFIX}mirror:{app_id}:{kind}s:absent"


def mirror_doubt(app_id: str, kind: Kind) -> str:
    """SET of directory ids with a write in flight or interrupted: re-read before trusting."""
    return f"{PREFIX}mirror:{app_id}:{kind}s:doubt"


def mirror_reread(app_id: str, kind: Kind) -> str:
    """SET of directory ids whose entry the app may not hold as recorded (a Bulk write taken
    as sent, put in question by a read-back): re-read by the next run. Unlike a doubt, the
    record of a write does not end it; only the re-read does."""
    return f"{PREFIX}mirror:{app_id}:{kind}s:reread"


def mirror_creating(app_id: str, kind: Kind) -> str:
    """HASH directory id -> the name its last create was sent with, until its outcome is
    recorded: an interrupted create is looked up by that name too (the object may have been
    renamed in the directory since)."""
    return f"{PREFIX}mirror:{app_id}:{kind}s:creating"


AUDIT = PREFIX + "audit"  # STREAM of provisioning attempts (see audit.py)
JOURNAL = PREFIX + "journal"  # STREAM of accepted events


WORKERS = PREFIX + "workers"  # ZSET worker name -> heartbeat expiry (ms)


def jumpcloud(org: str, name: str) -> str:
    """The JumpCloud connector's state for one org (producers/jumpcloud/): ``cursor`` (STRING,
    JSON: the Directory Insights query's start and ``search_after``), ``synced`` (STRING, JSON:
    the last sync that was published)."""
    return f"{PREFIX}jumpcloud:{org}:{name}"


# Projection (written by lua/ingest.lua; read by projection.py)
def user(user_id: str) -> str:
    return f"{PREFIX}u:{user_id}"


def group(group_id: str) -> str:
    return f"{PREFIX}g:{group_id}"


def group_member_registers(group_id: str) -> str:
    return f"{PREFIX}gm:{group_id}"


def group_members(group_id: str) -> str:
    return f"{PREFIX}gmc:{group_id}"


def user_groups(user_id: str) -> str:
    return f"{PREFIX}ug:{user_id}"


def app_group_registers(app_id: str) -> str:
    return f"{PREFIX}ag:{app_id}"


def app_groups(app_id: str) -> str:
    return f"{PREFIX}agc:{app_id}"


def group_apps(group_id: str) -> str:
    return f"{PREFIX}ga:{group_id}"


def app_user_registers(app_id: str) -> str:
    return f"{PREFIX}au:{app_id}"


def app_users(app_id: str) -> str:
    return f"{PREFIX}auc:{app_id}"


def user_apps(user_id: str) -> str:
    return f"{PREFIX}ua:{user_id}"


PROJECTION_PATTERNS = tuple(
    PREFIX + p
    for p in (
        "u:*",
        "g:*",
        "gm:*",
        "gmc:*",
        "ug:*",
        "ag:*",
        "agc:*",
        "ga:*",
        "au:*",
        "auc:*",
        "ua:*",
    )
)


@dataclass(frozen=True, order=True)
class ReconcileKey:
    """One object of one application, the unit of work of the workqueue."""

    app: str
    kind: Kind
    id: str

    def __str__(self) -> str:
        return f"{self.app} {self.kind} {self.id}"

    @property
    def object(self) -> str:
        """The object's name in audit entries and the deletion guard: ``user:<id>``."""
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: str | bytes) -> ReconcileKey:
        """The key of a text made by ``str`` (``ValueError`` for anything else)."""
        if isinstance(text, bytes):
            text = text.decode()
        parts = text.split(" ", 2)
        if len(parts) != 3 or parts[1] not in ("user", "group"):
            raise ValueError(f"bad reconcile key {text!r}")
        return cls(*parts)  # type: ignore[arg-type]

    @staticmethod
    def prefix(app_id: str) -> str:
        """What the text of every key of ``app_id`` starts with (to pick its keys in a scan)."""
        return f"{app_id} "
