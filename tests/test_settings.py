"""The settings (``worker/config.py``): README's configuration table lists exactly its fields with
their defaults, an invalid value stops a process in one line (exit status 2), and nothing else
reads the environment."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from worker import config
from worker.config import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[1]


# -- the documentation -------------------------------------------------------------------------
def documented_default(name: str) -> str:
    """A field's default as the README writes it (without backticks)."""
    field = Settings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "shown" in extra:
        return str(extra["shown"])
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"{value:g}" if isinstance(value, float) else str(value)


def readme_table() -> dict[str, tuple[str, str]]:
    """``{variable: (default, meaning)}`` from README.md's "Configuration" table."""
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            variable, default, meaning = (c.replace("`", "") for c in cells)
            assert variable not in rows, f"{variable} is in the table twice"
            rows[variable] = (default, meaning)
    return rows


def test_the_readme_table_lists_every_setting_and_nothing_else() -> None:
    documented, fields = set(readme_table()), set(Settings.variables())
    assert not fields - documented, f"missing from README's table: {sorted(fields - documented)}"
    assert not documented - fields, f"not settings: {sorted(documented - fields)}"


def test_the_readme_table_gives_each_setting_its_default_and_a_meaning() -> None:
    table = readme_table()
    for variable, name in Settings.variables().items():
        default, meaning = table[variable]
        assert default == documented_default(name), f"{variable}: README says {default!r}"
        assert meaning, f"{variable}: no meaning in README's table"
        assert Settings.model_fields[name].description, f"{name}: no description"


def test_the_deploy_example_names_only_settings_with_their_defaults() -> None:
    variables = Settings.variables()
    text = (ROOT / "deploy" / "provisioner.env.example").read_text()
    found = re.findall(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE)
    assert found
    for commented, variable, value in found:
        assert variable in variables, f"provisioner.env.example: {variable} is no setting"
        if commented:  # a commented line shows the default
            name = variables[variable]
            if Settings.model_fields[name].default is not None:
                assert value == documented_default(name), f"{variable}: example {value!r}"


# -- reading and checking ----------------------------------------------------------------------
def test_values_are_typed_and_an_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONER_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("PROVISIONER_WEBHOOK_ALLOW_BEARER", "yes")
    monkeypatch.setenv("PROVISIONER_JOURNAL_MAXLEN", "")
    conf = config.load()
    assert conf.lease_seconds == 2.5 and conf.webhook_allow_bearer is True
    assert conf.journal_maxlen == 2_000_000


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PROVISIONER_LEASE_SECONDS", "abc", "expected a positive number"),
        ("PROVISIONER_LEASE_SECONDS", "-1", "expected a positive number"),
        ("PROVISIONER_AUDIT_MAXLEN", "1.5", "expected a positive integer"),
        ("PROVISIONER_GUARD_PERCENT", "101", "expected a number >= 0 and <= 100"),
        ("PROVISIONER_WEBHOOK_PORT", "0", "expected an integer >= 1 and <= 65535"),
        ("PROVISIONER_WEBHOOK_INSECURE", "maybe", "expected a boolean"),
    ],
)
def test_an_invalid_value_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    problem = config.check_settings()
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"invalid {variable}={value!r}: {expected}")
    with pytest.raises(SettingsError, match=re.escape(variable)):
        config.load()


def test_load_or_exit_prints_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROVISIONER_LEASE_SECONDS", "abc")
    monkeypatch.setenv("PROVISIONER_WEBHOOK_SECRET", "do-not-print-me")
    monkeypatch.setenv("SENTRY_DSN", "https://do-not-print-me@sentry.invalid/1")
    try:
        with pytest.raises(SystemExit) as exited:
            config.load_or_exit("provisioner worker")
    finally:
        monkeypatch.undo()
        config.settings.cache_clear()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("provisioner worker: invalid PROVISIONER_LEASE")
    assert "do-not-print-me" not in err


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISIONER_WEBHOOK_SECRET", "do-not-print-me")
    monkeypatch.setenv("SENTRY_DSN", "https://do-not-print-me@sentry.invalid/1")
    monkeypatch.setenv("REDIS_URL", "redis://:do-not-print-me@redis.internal:6379/0")
    conf = config.load()
    assert "do-not-print-me" not in repr(conf) and "do-not-print-me" not in str(conf.model_dump())
    assert conf.webhook_secret_text == "do-not-print-me"
    assert conf.redis_url == "redis://:do-not-print-me@redis.internal:6379/0"


def test_redis_falls_back_to_the_local_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("PROVISIONER_HOME", str(tmp_path))
    with pytest.raises(SystemExit, match="no Redis: set REDIS_URL"):
        _ = config.load().redis_url
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "redis.url").write_text("redis://127.0.0.1:7777/0\n")
    assert config.load().redis_url == "redis://127.0.0.1:7777/0"


@pytest.mark.parametrize(
    "start", ["import worker.tasks", "from producers.webhook import serve; serve()"]
)
def test_a_process_with_an_invalid_value_exits_2_without_a_traceback(start: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROVISIONER_LEASE_SECONDS": "-1",
           "REDIS_URL": "redis://127.0.0.1:1/0"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", start], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(
        "invalid PROVISIONER_LEASE_SECONDS='-1': expected a positive number"
    )


# -- one reader of the environment -------------------------------------------------------------
def environment_reads(source: str, *, may_pass_on: bool = False) -> list[int]:
    """Lines that read the environment (``os.environ``, ``os.getenv``, ``from os import
    environ``). Setting a variable is no read, nor is ``{**os.environ, …}`` (the environment
    of a child process) when ``may_pass_on``."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [node.lineno for a in node.names if a.name in ("environ", "getenv")]
        if not (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ("environ", "getenv", "environb", "getenvb")
        ):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store | ast.Del):
            continue
        unpacked = isinstance(parent, ast.Dict) and any(
            k is None and v is node for k, v in zip(parent.keys, parent.values, strict=True)
        )
        if may_pass_on and unpacked:
            continue
        found.append(node.lineno)
    return sorted(found)


def test_the_reader_finder_finds_reads_and_leaves_writes() -> None:
    source = (
        "import os\nfrom os import getenv\na = os.environ.get('A')\nb = os.getenv('B')\n"
        "c = os.environ['C']\nos.environ['D'] = '1'\nenv = {**os.environ, 'E': '1'}\n"
    )
    assert environment_reads(source) == [2, 3, 4, 5, 7]
    assert environment_reads(source, may_pass_on=True) == [2, 3, 4, 5]


def test_only_the_settings_read_the_environment() -> None:
    wrong = []
    for top in ("worker", "producers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative == Path("worker/config.py"):
                continue
            devstack = relative.parts[:2] == ("worker", "devstack")
            lines = environment_reads(path.read_text(), may_pass_on=devstack)
            wrong += [f"{relative}:{line}" for line in lines]
    assert not wrong, "read the environment through worker.config instead:\n" + "\n".join(wrong)
