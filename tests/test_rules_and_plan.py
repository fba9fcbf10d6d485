"""The rules and the planner are pure: tested without Redis, Celery or HTTP."""

from worker.contract.model import (
    AppSettings,
    DirectoryUser,
    GroupFacts,
    MirrorGroup,
    MirrorUser,
    UserFacts,
)
from worker.scim.profiles import GENERIC, ZSCALER
from worker.sync.plan import (
    CreateGroup,
    CreateUser,
    DeleteUser,
    LookupGroup,
    LookupUser,
    PatchMembers,
    RemoveGroup,
    RenameGroup,
    ReplaceGroup,
    SetActive,
    UpdateUser,
    membership_patches,
    plan_group,
    plan_user,
)
from worker.sync.rules import (
    Delete,
    Deprovision,
    Leave,
    Provision,
    SyncGroup,
    group_intent,
    user_intent,
)

APP = AppSettings(id="zs")
RECORD = {"id": "u1", "username": "a@x.com", "email": "a@x.com", "department": "Eng"}


def facts(*, direct=False, groups=(), deleted=False, suspended=False, record=RECORD):
    user = DirectoryUser("u1", record, suspended=suspended, deleted=deleted)
    return UserFacts(user, direct, frozenset(groups))


def test_implicit_deny():
    assert isinstance(user_intent(facts(), None, APP), Leave)


def test_covered_user_is_provisioned_with_the_zscaler_mapping():
    intent = user_intent(facts(groups=["g1"], suspended=True), None, APP)
    assert isinstance(intent, Provision)
    assert intent.attributes["userName"] == "a@x.com"
    assert intent.attributes["department"] == "Eng"
    assert intent.attributes["active"] is False


def test_uncovered_managed_user_is_deactivated_not_deleted():
    mirror = MirrorUser("r1", {"userName": "a@x.com", "active": True})
    assert isinstance(user_intent(facts(), mirror, APP), Deprovision)
    assert plan_user(Deprovision("x"), mirror, ZSCALER) == [
        SetActive("r1", False, {"userName": "a@x.com", "active": False})
    ]
    inactive = MirrorUser("r1", {"userName": "a@x.com", "active": False})
    assert plan_user(Deprovision("x"), inactive, ZSCALER) == []


def test_deleted_user_follows_the_delete_policy():
    mirror = MirrorUser("r1", {"userName": "a@x.com", "active": True})
    assert isinstance(user_intent(facts(deleted=True, direct=True), mirror, APP), Deprovision)
    deleting = AppSettings(id="zs", user_delete_policy="delete")
    intent = user_intent(facts(deleted=True), mirror, deleting)
    assert isinstance(intent, Delete)
    assert plan_user(intent, mirror, ZSCALER) == [DeleteUser("r1")]
    assert isinstance(user_intent(facts(deleted=True), None, deleting), Leave)


def test_lookup_before_create_then_create_without_empty_attributes():
    intent = user_intent(facts(direct=True), None, APP)
    assert plan_user(intent, None, ZSCALER) == [LookupUser("a@x.com")]
    (create,) = plan_user(intent, None, ZSCALER, looked_up=True)
    assert isinstance(create, CreateUser)
    assert "name.givenName" not in create.attributes


def test_only_changed_attributes_are_sent_and_nothing_when_equal():
    intent = user_intent(facts(direct=True), None, APP)
    sent = {k: v for k, v in intent.attributes.items() if v is not None}
    mirror = MirrorUser("r1", sent)
    assert plan_user(intent, mirror, GENERIC) == []
    moved = user_intent(facts(direct=True, record={**RECORD, "department": "Ops"}), None, APP)
    (update,) = plan_user(moved, mirror, GENERIC)
    assert isinstance(update, UpdateUser) and update.changes == {"department": "Ops"}


def test_excluded_attribute_is_neither_sent_nor_cleared():
    app = AppSettings(id="zs", excluded_attributes=frozenset({"department"}))
    intent = user_intent(facts(direct=True, record={**RECORD, "department": "Ops"}), None, app)
    assert "department" not in intent.attributes
    mirror = MirrorUser(
        "r1", {"userName": "a@x.com", "active": True, "emails": "a@x.com", "department": "Eng"}
    )
    assert plan_user(intent, mirror, ZSCALER) == []


def group(*, name="eng", deleted=False, associated=True, members=("u1", "u2")):
    return GroupFacts("g1", name, deleted, associated, frozenset(members))


def test_empty_groups_are_not_created_and_unknown_members_wait():
    assert isinstance(group_intent(group(), None, {"u1": None, "u2": None}, APP), Leave)


def test_members_are_the_covered_ones_that_exist_in_the_app():
    intent = group_intent(group(), None, {"u1": "r1", "u2": None}, APP)
    assert intent == SyncGroup("eng", {"u1": "r1"})
    assert plan_group(intent, None, ZSCALER) == [LookupGroup("eng")]
    assert plan_group(intent, None, ZSCALER, looked_up=True) == [CreateGroup("eng", {"u1": "r1"})]


def test_rename_and_membership_diff_on_a_managed_group():
    mirror = MirrorGroup("G", "eng", {"u1": "r1", "u3": "r3"})
    intent = SyncGroup("engineering", {"u1": "r1", "u2": "r2"})
    assert plan_group(intent, mirror, ZSCALER) == [
        RenameGroup("G", "engineering"),
        PatchMembers("G", add={"u2": "r2"}, remove={"u3": "r3"}),
    ]


def test_a_put_only_app_gets_one_replacement():
    no_patch = GENERIC.__class__(**{**GENERIC.__dict__, "group_patch": False})
    mirror = MirrorGroup("G", "eng", {"u1": "r1"})
    intent = SyncGroup("eng", {"u2": "r2"})
    assert plan_group(intent, mirror, no_patch) == [ReplaceGroup("G", "eng", {"u2": "r2"})]


def test_membership_changes_are_chunked_per_patch():
    add = {f"u{i}": f"r{i}" for i in range(250)}
    patches = membership_patches("G", add, {}, 100)
    assert [len(p.add) for p in patches] == [100, 100, 50]


def test_disassociated_group_is_left_deleted_group_is_deleted_if_ours():
    mirror = MirrorGroup("G", "eng", {"u1": "r1"})
    assert isinstance(group_intent(group(associated=False), mirror, {}, APP), Leave)
    intent = group_intent(group(deleted=True, associated=False), mirror, {}, APP)
    assert plan_group(intent, mirror, ZSCALER) == [RemoveGroup("G")]
    assert isinstance(group_intent(group(deleted=True), None, {}, APP), Leave)


def test_group_management_disabled_sends_no_group_call():
    off = AppSettings(id="zs", group_management=False)
    mirror = MirrorGroup("G", "eng", {"u1": "r1"})
    assert isinstance(group_intent(group(deleted=True), mirror, {"u1": "r1"}, off), Leave)
