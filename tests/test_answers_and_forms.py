"""Reading the application's answers, and the request forms that fall back (pure parts)."""

from __future__ import annotations

import pytest

from worker.contract.model import MirrorGroup, MirrorUser
from worker.scim import GENERIC, ZSCALER, Invalid, Transient, Unsupported, compat
from worker.scim.errors import error_for_status
from worker.sync import answers
from worker.sync.plan import (
    CreateUser,
    PatchMembers,
    RenameGroup,
    ReplaceGroup,
    SetActive,
    UpdateUser,
    attribute_changes,
    plan_group,
)
from worker.sync.rules import SyncGroup

# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "scim_type"),
    [(501, None), (405, None), (400, "invalidPath"), (400, "noTarget"), (400, "invalidSyntax")],
)
def test_a_form_the_app_does_not_implement_is_unsupported_never_transient(status, scim_type):
    error = error_for_status(status, "no", scim_type)
    assert isinstance(error, Unsupported) and isinstance(error, Invalid)
    assert not isinstance(error, Transient)


@pytest.mark.parametrize(("status", "scim_type"), [(400, "invalidValue"), (400, None)])
def test_a_bad_value_is_invalid_not_unsupported(status, scim_type):
    error = error_for_status(status, "no", scim_type)
    assert isinstance(error, Invalid) and not isinstance(error, Unsupported)


def test_other_server_errors_stay_transient():
    assert isinstance(error_for_status(500, "x"), Transient)
    assert isinstance(error_for_status(503, "x"), Transient)


# -- forms -----------------------------------------------------------------------------------


def test_forms_start_with_the_profile_and_move_forward_only():
    assert compat.forms(ZSCALER, {})["user_update"] == "put"  # ZIA: PUT for users
    assert compat.forms(GENERIC, {})["member_remove"] == "filter"
    learned = {"member_remove": "value", "user_update": "patch"}  # patch is behind put
    assert compat.forms(ZSCALER, learned) | {} == {
        "user_update": "put",
        "group_rename": "patch",
        "member_add": "patch",
        "member_remove": "value",
    }
    assert compat.forms(GENERIC, {"member_remove": "nonsense"})["member_remove"] == "filter"


def test_next_form_walks_each_chain_to_its_end():
    learned: dict[str, str] = {}
    seen = []
    while (form := compat.next_form(GENERIC, learned, "member_remove")) is not None:
        learned["member_remove"] = form
        seen.append(form)
    assert seen == ["value", "put"]
    assert compat.next_form(GENERIC, {}, "user_update") == "put"
    assert compat.next_form(ZSCALER, {}, "user_update") is None  # PUT is the last form


def test_the_effective_profile_is_what_the_planner_and_client_read():
    profile = compat.effective(GENERIC, {"member_remove": "value", "group_rename": "put"})
    assert profile.group_patch and profile.member_remove_form == "value"
    assert profile.group_rename == "put"
    whole = compat.effective(GENERIC, {"member_remove": "put"})
    assert not whole.group_patch  # members by PUT: the planner sends ReplaceGroup
    assert not compat.effective(GENERIC, {"user_update": "put"}).user_patch
    assert compat.effective(GENERIC, {}) == GENERIC


def test_each_call_names_the_operation_whose_form_failed():
    assert compat.operation_of(UpdateUser("r", {"displayName": "x"}, {})) == "user_update"
    assert compat.operation_of(SetActive("r", False, {})) == "user_update"
    assert compat.operation_of(RenameGroup("g", "new")) == "group_rename"
    assert compat.operation_of(PatchMembers("g", {"u": "1"}, {})) == "member_add"
    assert compat.operation_of(PatchMembers("g", {"u": "1"}, {"v": "2"})) == "member_remove"
    assert compat.operation_of(CreateUser({"userName": "a"})) is None
    assert compat.operation_of(ReplaceGroup("g", "n", {})) is None


# -- user answers ----------------------------------------------------------------------------


def test_an_attribute_missing_from_the_answer_is_unsupported_and_not_held():
    sent = {"userName": "ann", "active": True, "department": "Sales", "displayName": "Ann"}
    held = {"userName": "ann", "active": True, "displayName": "Ann"}
    result = answers.user_answer("r1", sent, held, None)
    assert result.unsupported == ("department",)
    assert result.entry == MirrorUser("r1", held)


def test_required_attributes_are_never_learned_unsupported():
    result = answers.user_answer("r1", {"userName": "ann", "active": False}, {"userName": "ann",
                                 "active": True}, None)  # fmt: skip
    assert result.unsupported == ()
    assert result.entry.attributes["active"] is True  # what the app holds
    assert "active" not in result.entry.normalized  # a refused deactivation is never normal


def test_a_value_stored_in_the_apps_own_form_is_not_sent_again():
    sent = {"userName": "ann", "emails": "Ann@Example.com"}
    held = {"userName": "ann", "emails": "ann@example.com"}
    entry = answers.user_answer("r1", sent, held, None).entry
    assert entry.attributes["emails"] == "ann@example.com"
    assert entry.normalized == {"emails": ("Ann@Example.com", "ann@example.com")}
    desired = {"userName": "ann", "emails": "Ann@Example.com"}
    assert attribute_changes(desired, entry.attributes, entry.normalized) == {}
    changed = {"userName": "ann", "emails": "Bob@Example.com"}  # a real change is still sent
    assert attribute_changes(changed, entry.attributes, entry.normalized) == {
        "emails": "Bob@Example.com"
    }


def test_a_normalization_is_forgotten_when_the_app_holds_something_else():
    before = MirrorUser("r1", {"userName": "ann", "emails": "a@x.org"}, {"emails": ("A@x.org",
                        "a@x.org")})  # fmt: skip
    entry = answers.user_answer("r1", {"displayName": "Ann"}, {"userName": "ann",
                                "emails": "other@x.org", "displayName": "Ann"}, before).entry  # fmt: skip
    assert entry.normalized == {}


def test_without_a_body_the_mirror_keeps_what_was_sent():
    before = MirrorUser("r1", {"userName": "ann", "displayName": "A", "department": "X"})
    entry = answers.user_answer("r1", {"displayName": "B", "department": None}, None, before)
    assert entry.entry == MirrorUser("r1", {"userName": "ann", "displayName": "B"})
    assert entry.unsupported == ()


# -- group answers ---------------------------------------------------------------------------


def test_members_the_app_left_out_of_its_answer_are_not_recorded():
    sent = {"u1": "r1", "u2": "r2"}
    assert answers.group_members(sent, frozenset(), {}) == {}
    assert answers.group_members(sent, frozenset({"r1"}), {}) == {"u1": "r1"}
    assert answers.group_members(sent, None, {}) == sent  # the answer said nothing of members
    # a member nobody told us of is kept as a stranger, as a taken-over group's are
    assert answers.group_members(sent, frozenset({"r1", "r9"}), {}) == {"u1": "r1", "?r9": "r9"}


def test_the_planner_completes_what_the_app_dropped():
    entry = MirrorGroup("g1", "eng", answers.group_members({"u1": "r1"}, frozenset(), {}))
    calls = plan_group(SyncGroup("eng", {"u1": "r1"}), entry, GENERIC)
    assert calls == [PatchMembers("g1", {"u1": "r1"}, {})]
    put = plan_group(SyncGroup("eng", {"u1": "r1"}), entry, compat.effective(GENERIC, {
        "member_add": "put"}))  # fmt: skip
    assert put == [ReplaceGroup("g1", "eng", {"u1": "r1"})]


def test_ignored_membership_changes_are_named():
    assert answers.ignored_members({"u1": "r1"}, {"u2": "r2"}, {"u1": "r1"}) == ""
    assert answers.ignored_members({"u1": "r1"}, {}, {}) == "adding 1 members"
    assert answers.ignored_members({}, {"u2": "r2"}, {"u2": "r2"}) == "removing 1 members"


def test_a_group_name_in_the_apps_own_form_is_not_renamed_again():
    entry = answers.group_entry("g1", "Eng Team", {}, "eng team", None)
    assert entry.display_name == "eng team"
    assert plan_group(SyncGroup("Eng Team", {}), entry, GENERIC) == []
    kept = answers.group_entry("g1", "new", {}, "old", MirrorGroup("g1", "old"))
    assert kept.display_name == "old" and kept.normalized == {}  # a rename ignored: not normal
    assert plan_group(SyncGroup("new", {}), kept, GENERIC) == [RenameGroup("g1", "new")]
