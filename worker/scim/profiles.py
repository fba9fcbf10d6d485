"""Target profiles: what an application accepts, as data (authentik's "compatibility modes").

The client and the engine read these fields instead of branching on the vendor's name. Each
vendor fact below sits next to the documentation it comes from; a value no vendor publishes
says "not published" and why the default chosen is safe. Limits change: re-check the sources
before relying on a number, and override the pace of one app with ``--rate``/``--burst``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from scim2_models import ServiceProviderConfig


@dataclass(frozen=True)
class Profile:
    """How to talk to one kind of SCIM application."""

    name: str
    user_patch: bool
    """Send PATCH for users; otherwise PUT the whole resource."""
    group_patch: bool
    """Send PATCH for groups; otherwise PUT the whole group (members included)."""
    member_remove_form: Literal["filter", "value"]
    """``filter``: one ``remove`` per member with ``members[value eq "id"]`` (RFC 7644);
    ``value``: one ``remove`` with ``path: members`` and a value list (Entra style)."""
    members_per_patch: int
    """Maximum member changes (adds + removes) in one PATCH request, and members in a create."""
    filter_supported: bool
    """Look an object up by name (``userName``/``displayName eq``) before creating it."""
    requests_per_second: float
    """The pool-wide pace of the app when it has no ``--rate``."""
    burst: int
    """Requests allowed at once above the pace, when the app has no ``--burst``."""
    user_delete: Literal["deactivate", "delete"] = "deactivate"
    """What a user deleted in the directory becomes in the application by default (a new app's
    ``--user-delete-policy``)."""
    enterprise_department: bool = True
    """Send ``department`` in the enterprise User extension."""
    page_size: int = 100
    """``count`` asked for per page when listing (at most what the app serves per page)."""
    group_members_readable: bool = True
    """The app returns a group's ``members`` when read (AWS IAM Identity Center does not): when
    False, what a read or an answer says of members is not taken as what the group holds."""
    group_rename: Literal["patch", "put"] = "patch"
    """How a rename is sent where groups take PATCH: ``replace displayName``, or a PUT of the
    whole group (some apps rename only by PUT). Read by ``worker.scim.compat``."""
    renames_groups: bool = True
    """The app can rename a group (Atlassian Cloud cannot: the old name stays). When False the
    planner sends no rename; the members still sync (``worker.sync.plan._sync_existing``)."""
    bulk: bool = False
    """Combine the writes of many keys into Bulk requests (RFC 7644 §3.7) when the app's
    ``/ServiceProviderConfig`` announces Bulk; its ``maxOperations`` and ``maxPayloadSize``
    bound each request (``worker.scim.bulk``)."""
    bulk_counts_operations: bool = False
    """The app's rate limit counts each operation of a Bulk request, not the request."""
    sources: tuple[str, ...] = ()
    """Where the facts above come from (provenance for people; nothing reads it at run time)."""


# Zscaler Internet Access. Rate: 5 requests/s per tenant, documented
# (https://help.zscaler.com/zia/scim-api-examples); the throttling status is not documented,
# so 429 and 503 both slow the app down (worker/scim/errors.py).
ZSCALER = Profile(
    name="zscaler",
    # ZIA lists PUT and PATCH on /Users (https://help.zscaler.com/zia/understanding-scim);
    # PUT is the form every ZIA source shows, so users are PUT
    user_patch=False,
    # groups: PUT/PATCH listed; the member PATCH forms are not documented: RFC 7644's
    # https://help.zscaler.com/zia/understanding-scim
    group_patch=True,
    member_remove_form="filter",
    # per-PATCH member cap: not published; 100, the smallest cap any target documents
    members_per_patch=100,
    # userName/externalId/id eq, groups displayName eq
    # https://help.zscaler.com/zia/understanding-scim
    filter_supported=True,
    requests_per_second=5.0,
    burst=5,
    # DELETE deletes (409 for admin-linked users, then the engine deactivates):
    # https://help.zscaler.com/zia/configuring-advanced-configuration-admins
    user_delete="deactivate",
    # department travels in the enterprise extension: https://help.zscaler.com/zia/scim-api-examples
    enterprise_department=True,
    # ZIA serves up to 1,000 per page (https://help.zscaler.com/zia/understanding-scim); 100
    # keeps a page of groups, which come with their members, under the client's 1 MiB cap
    page_size=100,
    # POST /Bulk is listed (https://help.zscaler.com/zia/understanding-scim); its limits are not
    # published: they are read from the tenant's /ServiceProviderConfig. Whether the 5/s counts
    # a Bulk request or its operations is not published either: one request, as RFC 7644
    # counts it; if ZIA counts operations, its 429s bring the pool's pace down (ratelimit.py)
    bulk=True,
    sources=(
        "https://help.zscaler.com/zia/understanding-scim",
        "https://help.zscaler.com/zia/scim-api-examples",
        "https://help.zscaler.com/zia/configuring-advanced-configuration-admins",
    ),
)

# Zscaler Private Access. ZPA's ``active=false`` DELETES the user
# (https://help.zscaler.com/zpa/about-scim): every deactivation the engine sends (a suspension,
# an implicit deny, the last covering group removed) removes the user from ZPA. The mirror still
# holds the old id; a later reactivation gets 404 there and the engine re-creates the user
# (worker/sync/executor.py ``Executor.on_remote``), with a new ZPA id.
ZSCALER_ZPA = Profile(
    name="zscaler-zpa",
    # Users and Groups: GET, POST, PUT/PATCH, DELETE (https://help.zscaler.com/zpa/about-scim-apis)
    user_patch=True,
    group_patch=True,
    # member remove form: not documented; RFC 7644's
    member_remove_form="filter",
    # per-PATCH member cap: not published; 100, the smallest cap any target documents
    members_per_patch=100,
    # filters: not documented; lookups stay on (they prevent duplicate users) and never adopt
    # an account of another name (worker/scim/client.py ``_named``)
    filter_supported=True,
    # "rate limited", figure from Zscaler Support only (https://help.zscaler.com/zpa/about-scim-apis):
    # not published; ZIA's documented 5/s as the default, set --rate to Support's figure
    requests_per_second=5.0,
    burst=5,
    # a directory deletion is a DELETE: deactivating would delete the user anyway
    # (https://help.zscaler.com/zpa/about-scim), and DELETE lets the mirror forget the id
    user_delete="delete",
    # only userName is required and no custom attributes (https://help.zscaler.com/zpa/about-scim);
    # the enterprise extension is standard, not custom: unconfirmed, kept
    enterprise_department=True,
    # max count: not documented (paging with startIndex/count is:
    # https://help.zscaler.com/zpa/about-scim-apis); 100
    page_size=100,
    sources=(
        "https://help.zscaler.com/zpa/about-scim-apis",
        "https://help.zscaler.com/zpa/about-scim",
    ),
)

# AWS IAM Identity Center. Known gaps for the listing code: ListUsers pages with a cursor, not
# startIndex (https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html).
AWS = Profile(
    name="aws",
    # PATCH add/replace/remove, enterprise extension included; no two operations on userName or
    # active in one request (the client sends one operation per attribute)
    # https://docs.aws.amazon.com/singlesignon/latest/developerguide/patchuser.html
    user_patch=True,
    # PATCH on displayName, members, externalId; never replace/remove all members (400)
    # https://docs.amazonaws.cn/singlesignon/latest/developerguide/patchgroup.html
    group_patch=True,
    # the docs give no removal path; AWS's own ssosync removes with path "members" and a list
    # https://github.com/awslabs/ssosync/blob/master/internal/aws/client.go
    member_remove_form="value",
    # at most 100 membership changes per PATCH, and 100 members in a create
    # https://docs.amazonaws.cn/singlesignon/latest/developerguide/patchgroup.html
    # https://docs.amazonaws.cn/singlesignon/latest/developerguide/creategroup.html
    members_per_patch=100,
    # eq (+and) only: userName, displayName
    # https://docs.amazonaws.cn/en_us/singlesignon/latest/developerguide/limitations.html
    filter_supported=True,
    # not published: 429 ThrottlingException only
    # (https://docs.aws.amazon.com/singlesignon/latest/developerguide/deleteuser.html); an
    # unpaced sync hit it at ~200 objects (https://github.com/awslabs/ssosync/issues/13): 5/s
    requests_per_second=5.0,
    burst=5,
    # DELETE is a hard delete: directory deletions deactivate by default
    # https://docs.aws.amazon.com/singlesignon/latest/developerguide/deleteuser.html
    user_delete="deactivate",
    enterprise_department=True,
    # count at most 100: https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html
    page_size=100,
    # GET on a group always answers empty members
    # https://docs.aws.amazon.com/singlesignon/latest/developerguide/getgroup.html
    group_members_readable=False,
    sources=(
        "https://docs.aws.amazon.com/singlesignon/latest/developerguide/patchuser.html",
        "https://docs.amazonaws.cn/singlesignon/latest/developerguide/patchgroup.html",
        "https://docs.amazonaws.cn/singlesignon/latest/developerguide/creategroup.html",
        "https://docs.amazonaws.cn/en_us/singlesignon/latest/developerguide/limitations.html",
        "https://docs.aws.amazon.com/singlesignon/latest/developerguide/deleteuser.html",
        "https://docs.aws.amazon.com/singlesignon/latest/developerguide/getgroup.html",
        "https://docs.aws.amazon.com/singlesignon/latest/developerguide/listusers.html",
        "https://github.com/awslabs/ssosync/blob/master/internal/aws/client.go",
        "https://github.com/awslabs/ssosync/issues/13",
    ),
)

# Slack (SCIM v2 base URL: this client speaks SCIM 2.0). Slack rewrites userName (at most 21
# characters, "@" and other specials become "_": https://docs.slack.dev/reference/scim-api),
# so the directory's userName is not what Slack stores: a lookup by it cannot match.
SLACK = Profile(
    name="slack",
    # PATCH and PUT on users and groups; v2 removes one member with members[value eq U123]
    # https://docs.slack.dev/reference/scim-api
    user_patch=True,
    group_patch=True,
    member_remove_form="filter",
    # at most 15,000 users per call, 5,000 advised; a group is locked while it is written and a
    # concurrent write gets 429 (https://docs.slack.dev/reference/scim-api): 1,000, shorter
    # writes, still ten times fewer calls than 100
    members_per_patch=1000,
    # v2 documents no filter ("Not applicable": https://docs.slack.dev/reference/scim-api) and
    # userName is rewritten (above): create first; a 409 still looks the account up
    filter_supported=False,
    # writes 600/min per org for ALL SCIM apps (burst 180), and each write endpoint (POST
    # /Users, PATCH /Users/<id>, ...) 180/min, burst 20
    # (https://docs.slack.dev/reference/scim-api/rate-limits). The pool's pace cannot tell
    # endpoints apart and a first sync is mostly POST /Users: 180/min = 3/s, burst 20, keeps
    # every endpoint under its limit and leaves the org's budget to other SCIM apps.
    requests_per_second=3.0,
    burst=20,
    # DELETE only deactivates (active:true restores): https://docs.slack.dev/reference/scim-api
    user_delete="deactivate",
    # department in the enterprise extension: https://docs.slack.dev/reference/scim-api
    enterprise_department=True,
    # count at most 1,000 (https://api.slack.com/changelog/2019-06-have-scim-will-paginate);
    # 100: Slack lists groups with their members, and a page must fit the client's 1 MiB cap
    page_size=100,
    sources=(
        "https://docs.slack.dev/reference/scim-api",
        "https://docs.slack.dev/reference/scim-api/rate-limits",
        "https://api.slack.com/changelog/2019-06-have-scim-will-paginate",
    ),
)

# GitHub Enterprise Managed Users. A user cannot be created disabled
# (https://docs.pingidentity.com/integrations/github/github_emu_provisioner/pf_gh_emu_connector_known_issues_and_limitations.html).
GITHUB_EMU = Profile(
    name="github-emu",
    # users PUT or PATCH; groups PATCH add/remove/replace, rename by replace displayName
    # https://docs.github.com/en/enterprise-cloud@latest/rest/enterprise-admin/scim
    user_patch=True,
    group_patch=True,
    # member remove form and per-PATCH cap: not documented; RFC 7644's form, and 100
    member_remove_form="filter",
    members_per_patch=100,
    # one filter at a time on userName/externalId/id/displayName
    # https://docs.github.com/en/enterprise-cloud@latest/rest/enterprise-admin/scim
    filter_supported=True,
    # at most 1,000 users provisioned per hour, else rate-limit errors
    # (https://docs.github.com/en/enterprise-cloud@latest/admin/managing-iam/provisioning-user-accounts-with-scim/provisioning-users-and-groups-with-scim-using-the-rest-api).
    # 0.25/s is 900 requests an hour: under the limit even if every request created a user
    requests_per_second=0.25,
    burst=5,
    # DELETE is a permanent hard deprovision (a new account is needed); active:false is a
    # reversible suspend. Directory deletions deactivate by default.
    # https://docs.github.com/en/enterprise-cloud@latest/admin/managing-iam/provisioning-user-accounts-with-scim/deprovisioning-and-reinstating-users
    user_delete="deactivate",
    # department is not among GitHub's user attributes: never sent
    # https://docs.github.com/en/enterprise-cloud@latest/rest/enterprise-admin/scim
    enterprise_department=False,
    # count defaults to 30, maximum not documented; a shorter page than asked is paged on
    page_size=100,
    sources=(
        "https://docs.github.com/en/enterprise-cloud@latest/rest/enterprise-admin/scim",
        "https://docs.github.com/en/enterprise-cloud@latest/admin/managing-iam/provisioning-user-accounts-with-scim/provisioning-users-and-groups-with-scim-using-the-rest-api",
        "https://docs.github.com/en/enterprise-cloud@latest/admin/managing-iam/provisioning-user-accounts-with-scim/deprovisioning-and-reinstating-users",
        "https://docs.pingidentity.com/integrations/github/github_emu_provisioner/pf_gh_emu_connector_known_issues_and_limitations.html",
    ),
)

# Atlassian Cloud (user provisioning, Atlassian Guard).
ATLASSIAN = Profile(
    name="atlassian",
    # users PUT or PATCH: https://developer.atlassian.com/cloud/admin/user-provisioning/rest/api-group-users/
    user_patch=True,
    # groups: PATCH adds a members list; remove form and per-PATCH cap not documented: RFC
    # 7644's form, and 100 (https://developer.atlassian.com/cloud/admin/user-provisioning/rest/api-group-groups/)
    group_patch=True,
    member_remove_form="filter",
    members_per_patch=100,
    # one eq on userName or externalId; groups displayName eq
    # https://developer.atlassian.com/cloud/admin/user-provisioning/rest/api-group-users/
    filter_supported=True,
    # not published (https://developer.atlassian.com/cloud/admin/user-provisioning/rest/intro/
    # names none): 5/s, ZIA's documented pace, as a safe default
    requests_per_second=5.0,
    burst=5,
    # DELETE unlinks the user from the IdP and deactivates it; the SCIM record is gone for
    # good: directory deletions deactivate by default
    # https://developer.atlassian.com/cloud/admin/user-provisioning/rest/api-group-users/
    user_delete="deactivate",
    # the enterprise extension carries department
    # https://developer.atlassian.com/cloud/admin/user-provisioning/rest/api-group-users/
    enterprise_department=True,
    # 100 per page: https://support.atlassian.com/atlassian-cloud/kb/how-to-fetch-all-users-via-user-provisioning-scim-api/
    page_size=100,
    # no rename: Atlassian's way is a new group, its members moved, the old one deleted, and
    # deleting a group can revoke product access. The group keeps its old name; members sync.
    # https://developer.atlassian.com/cloud/admin/user-provisioning/rest/api-group-groups/
    renames_groups=False,
    sources=(
        "https://developer.atlassian.com/cloud/admin/user-provisioning/rest/api-group-users/",
        "https://developer.atlassian.com/cloud/admin/user-provisioning/rest/api-group-groups/",
        "https://developer.atlassian.com/cloud/admin/user-provisioning/rest/intro/",
        "https://support.atlassian.com/atlassian-cloud/kb/how-to-fetch-all-users-via-user-provisioning-scim-api/",
    ),
)

# Any SCIM 2.0 application: PATCH and filter support are read from its /ServiceProviderConfig
# (https://www.rfc-editor.org/rfc/rfc7643#section-5) when a worker builds its client.
GENERIC = Profile(
    name="generic",
    user_patch=True,
    group_patch=True,
    # the remove form RFC 7644 defines: https://www.rfc-editor.org/rfc/rfc7644#section-3.5.2.2
    member_remove_form="filter",
    members_per_patch=100,
    filter_supported=True,
    # ServiceProviderConfig announces no rate: not published; 25/s, burst 10 (use --rate)
    requests_per_second=25.0,
    burst=10,
    user_delete="deactivate",
    enterprise_department=True,
    # Bulk where its ServiceProviderConfig announces it: https://www.rfc-editor.org/rfc/rfc7644#section-3.7
    bulk=True,
    sources=(
        "https://www.rfc-editor.org/rfc/rfc7643#section-5",
        "https://www.rfc-editor.org/rfc/rfc7644#section-3.5.2.2",
    ),
)

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (ZSCALER, ZSCALER_ZPA, AWS, SLACK, GITHUB_EMU, ATLASSIAN, GENERIC)
}


def generic_from_config(spc: ServiceProviderConfig) -> Profile:
    """The generic profile, adjusted to what a ``/ServiceProviderConfig`` announces."""
    patch = bool(spc.patch and spc.patch.supported)
    filter_supported = bool(spc.filter and spc.filter.supported)
    return replace(GENERIC, user_patch=patch, group_patch=patch, filter_supported=filter_supported)


def profile_by_name(name: str, spc: ServiceProviderConfig | None = None) -> Profile:
    """The named profile; ``generic`` is adjusted to ``spc`` when given."""
    if name not in PROFILES:
        raise ValueError(f"unknown SCIM profile {name!r} (known: {', '.join(sorted(PROFILES))})")
    if name == "generic" and spc is not None:
        return generic_from_config(spc)
    return PROFILES[name]
