"""Target profiles: each is consistent, reachable by name and from the CLI, and what it says
reaches the planner and the wire. Unit tests: no Redis, no network (an in-memory transport)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import pytest
from scim2_models import Filter, Patch, ServiceProviderConfig

from worker.cli.main import cli, main
from worker.contract.model import MirrorGroup
from worker.scim import ENTERPRISE_URN, ScimClient
from worker.scim.client import AppHttp
from worker.scim.profiles import GENERIC, PROFILES, profile_by_name
from worker.sync.plan import PatchMembers, RenameGroup, ReplaceGroup, plan_group
from worker.sync.rules import SyncGroup

NAMES = sorted(PROFILES)
REQUIRED = {"zscaler", "zscaler-zpa", "aws", "slack", "github-emu", "atlassian", "generic"}


def test_the_required_profiles_are_there() -> None:
    assert set(PROFILES) >= REQUIRED


@pytest.mark.parametrize("name", NAMES)
def test_every_profile_is_consistent(name: str) -> None:
    profile = PROFILES[name]
    assert profile.name == name
    assert profile.members_per_patch >= 1
    assert profile.page_size >= 1
    assert profile.requests_per_second > 0
    assert profile.burst >= 1
    assert profile.member_remove_form in ("filter", "value")
    assert profile.user_delete in ("deactivate", "delete")
    assert profile.sources, f"{name} cites no source"
    for source in profile.sources:
        parts = urlsplit(source)
        assert parts.scheme == "https" and parts.netloc, f"{name}: {source!r} is not an https URL"
        assert not any(c.isspace() for c in source), f"{name}: {source!r}"
    assert len(set(profile.sources)) == len(profile.sources), f"{name} cites a source twice"


@pytest.mark.parametrize("name", NAMES)
def test_profile_by_name(name: str) -> None:
    assert profile_by_name(name) is PROFILES[name]


def test_an_unknown_profile_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="zscaler-zpa"):
        profile_by_name("okta")


def test_generic_follows_the_service_provider_config() -> None:
    spc = ServiceProviderConfig(
        patch=Patch(supported=False), filter=Filter(supported=False, max_results=0)
    )
    adjusted = profile_by_name("generic", spc)
    assert (adjusted.user_patch, adjusted.group_patch, adjusted.filter_supported) == (
        False,
        False,
        False,
    )
    assert adjusted.sources == GENERIC.sources
    # only generic is adjusted: a vendor profile is what its documentation says
    assert profile_by_name("aws", spc) is PROFILES["aws"]


def _command(*names: str) -> click.Command:
    command: click.Command = cli
    for name in names:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def _profile_choices(*names: str) -> set[str]:
    (option,) = (p for p in _command(*names).params if "--profile" in p.opts)
    return set(option.type.choices)


@pytest.mark.parametrize("command", ["activate", "update"])
def test_profile_choices_are_the_table(command: str) -> None:
    assert _profile_choices("apps", command) == set(PROFILES)


def _parsed(*argv: str) -> dict[str, Any]:
    """The parameters ``provisioner apps ARGV`` would run with (nothing runs)."""
    command = _command("apps", argv[0])
    return command.make_context(argv[0], list(argv[1:])).params


@pytest.mark.parametrize("name", NAMES)
def test_the_cli_accepts_every_profile(name: str) -> None:
    params = _parsed("activate", "a1", "--base-url", "https://x", "--token-file", "t",
                     "--profile", name)  # fmt: skip
    assert params["profile"] == name
    assert _parsed("update", "a1", "--profile", name)["profile"] == name


def test_the_cli_refuses_an_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(click.BadParameter):
        _parsed("update", "a1", "--profile", "okta")
    assert main(["apps", "update", "a1", "--profile", "okta"]) == 2
    assert "'okta' is not one of" in capsys.readouterr().err


# -- documented facts that change what is sent ---------------------------------------------
def test_directory_deletions_default_to_deactivation_where_delete_is_irreversible() -> None:
    # AWS DELETE is a hard delete, GitHub EMU's an irreversible deprovision, Atlassian's drops
    # the SCIM link for good; ZPA deletes on deactivation anyway, so it deletes
    assert PROFILES["aws"].user_delete == "deactivate"
    assert PROFILES["github-emu"].user_delete == "deactivate"
    assert PROFILES["atlassian"].user_delete == "deactivate"
    assert PROFILES["zscaler-zpa"].user_delete == "delete"


def test_documented_limits() -> None:
    aws = PROFILES["aws"]
    assert (aws.members_per_patch, aws.page_size, aws.group_members_readable) == (100, 100, False)
    assert PROFILES["atlassian"].renames_groups is False
    # department is not among GitHub's documented user attributes
    assert PROFILES["github-emu"].enterprise_department is False
    assert all(p.renames_groups for n, p in PROFILES.items() if n != "atlassian")
    # Slack: 180 writes a minute per endpoint; GitHub: at most 1,000 users an hour
    assert PROFILES["slack"].requests_per_second <= 180 / 60
    assert PROFILES["github-emu"].requests_per_second * 3600 < 1000


# -- the planner ---------------------------------------------------------------------------
MIRROR = MirrorGroup("G", "eng", {"u1": "r1", "u3": "r3"})
RENAMED = SyncGroup("engineering", {"u1": "r1", "u2": "r2"})


def test_no_rename_where_the_app_cannot_rename_but_members_still_sync() -> None:
    calls = plan_group(RENAMED, MIRROR, PROFILES["atlassian"])
    assert calls == [PatchMembers("G", add={"u2": "r2"}, remove={"u3": "r3"})]
    # a rename alone sends nothing, every time (the mirror keeps the app's name)
    assert (
        plan_group(SyncGroup("engineering", dict(MIRROR.members)), MIRROR, PROFILES["atlassian"])
        == []
    )


def test_the_same_rename_is_sent_where_the_app_can_rename() -> None:
    assert plan_group(RENAMED, MIRROR, PROFILES["zscaler"]) == [
        RenameGroup("G", "engineering"),
        PatchMembers("G", add={"u2": "r2"}, remove={"u3": "r3"}),
    ]


def test_a_put_only_profile_sends_puts() -> None:
    put_only = replace(GENERIC, group_patch=False)
    assert plan_group(RENAMED, MIRROR, put_only) == [
        ReplaceGroup("G", "engineering", {"u1": "r1", "u2": "r2"})
    ]
    members_only = SyncGroup("eng", {"u1": "r1"})
    assert plan_group(members_only, MIRROR, put_only) == [ReplaceGroup("G", "eng", {"u1": "r1"})]
    assert plan_group(SyncGroup("eng", dict(MIRROR.members)), MIRROR, put_only) == []


def test_a_put_only_profile_that_cannot_rename_puts_the_old_name() -> None:
    neither = replace(GENERIC, group_patch=False, renames_groups=False)
    assert plan_group(RENAMED, MIRROR, neither) == [
        ReplaceGroup("G", "eng", {"u1": "r1", "u2": "r2"})
    ]
    assert plan_group(SyncGroup("engineering", dict(MIRROR.members)), MIRROR, neither) == []


@pytest.mark.parametrize("name", NAMES)
def test_member_changes_are_chunked_to_the_profile(name: str) -> None:
    profile = PROFILES[name]
    many = {f"u{i:05}": f"r{i}" for i in range(profile.members_per_patch + 1)}
    calls = plan_group(SyncGroup("eng", many), MirrorGroup("G", "eng", {}), profile)
    assert all(len(c.add) + len(c.remove) <= profile.members_per_patch for c in calls)
    assert sum(len(c.add) for c in calls) == len(many) and len(calls) == 2


# -- the wire (an in-memory transport, no network) -----------------------------------------
class Recorder:
    """An httpx transport that records requests and answers each with ``body``."""

    def __init__(self, body: dict[str, Any] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.body = body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.body is None:
            return httpx.Response(204)
        return httpx.Response(
            200, json=self.body, headers={"Content-Type": "application/scim+json"}
        )


def _client(name: str, recorder: Recorder) -> ScimClient:
    http = AppHttp("https://app.example/scim/v2", "t0ken", transport=httpx.MockTransport(recorder))
    return ScimClient(http, PROFILES[name])


def _body(request: httpx.Request) -> dict[str, Any]:
    return json.loads(request.content)


def test_aws_removes_members_with_a_value_list() -> None:
    recorder = Recorder()
    _client("aws", recorder).patch_members("G", add=[], remove=["r1", "r2"])
    (request,) = recorder.requests
    (op,) = _body(request)["Operations"]
    assert (request.method, op["op"], op["path"]) == ("PATCH", "remove", "members")
    assert [m["value"] for m in op["value"]] == ["r1", "r2"]


def test_rfc_form_profiles_remove_each_member_by_filter() -> None:
    recorder = Recorder()
    _client("atlassian", recorder).patch_members("G", add=[], remove=["r1", "r2"])
    paths = [op["path"] for op in _body(recorder.requests[0])["Operations"]]
    assert paths == ['members[value eq "r1"]', 'members[value eq "r2"]']


USER = {"userName": "a@x.com", "active": True, "emails": "a@x.com", "department": "Eng"}
CREATED = {
    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
    "id": "r1",
    "userName": "a@x.com",
    "active": True,
}


@pytest.mark.parametrize("name", NAMES)
def test_department_is_sent_only_where_the_app_takes_it(name: str) -> None:
    recorder = Recorder(CREATED)
    _client(name, recorder).create_user(USER)
    body = _body(recorder.requests[0])
    assert (ENTERPRISE_URN in body) is PROFILES[name].enterprise_department


@pytest.mark.parametrize("name", NAMES)
def test_user_updates_use_the_profile_method(name: str) -> None:
    recorder = Recorder(CREATED)
    _client(name, recorder).update_user(
        "r1", {"userName": "b@x.com"}, {**USER, "userName": "b@x.com"}
    )
    (request,) = recorder.requests
    assert request.method == ("PATCH" if PROFILES[name].user_patch else "PUT")


def test_profiles_are_data() -> None:
    # a profile is a frozen value: nobody changes a vendor's facts at run time
    with pytest.raises(AttributeError):
        PROFILES["aws"].members_per_patch = 1000  # type: ignore[misc]
