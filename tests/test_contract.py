"""The contracts in the repository: the JSON Schemas, the docs and the examples agree with the
models of ``worker/contract/`` (the event contract and the snapshot format), so none can drift.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from worker.contract import schema, snapshot
from worker.contract.events import EVENT_TYPES, EventError, parse_event, parse_events
from worker.queue.publish import wire

ROOT = Path(__file__).resolve().parents[1]
EVENTS_DOC = ROOT / "docs" / "events.md"
SNAPSHOT_DOC = ROOT / "docs" / "snapshot.md"
SNAPSHOT_EXAMPLE = ROOT / "examples" / "snapshot.jsonl"
LINE_MODELS: list[type[BaseModel]] = [
    snapshot.Header,
    snapshot.UserLine,
    snapshot.GroupLine,
    snapshot.AppLine,
]


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of a Markdown file written in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(), re.M | re.S)


def sections(path: Path) -> dict[str, str]:
    """The ``###`` sections of a Markdown file: heading -> text."""
    parts = re.split(r"^### (.*)$", path.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation names (through unions, lists and ``Annotated``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


def fields_of(model: type[BaseModel]) -> dict[str, set[str]]:
    """Every model reachable from ``model`` (itself included) and its fields' names."""
    found: dict[str, set[str]] = {}

    def walk(current: type[BaseModel]) -> None:
        if current.__name__ in found:
            return
        found[current.__name__] = set(current.model_fields)
        for field in current.model_fields.values():
            for nested in models_in(field.annotation):
                walk(nested)

    walk(model)
    return found


# --- the JSON Schemas ---------------------------------------------------------------------------


def test_the_schema_files_are_what_the_models_generate() -> None:
    stale = [str(path.relative_to(ROOT)) for path in schema.stale()]
    assert not stale, f"{', '.join(stale)} differ from the models: run make schema"


def test_check_names_a_stale_file_and_write_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events_file, snapshot_file = tmp_path / "events.schema.json", tmp_path / "snapshot.schema.json"
    monkeypatch.setattr(schema, "EVENTS_SCHEMA", events_file)
    monkeypatch.setattr(schema, "SNAPSHOT_SCHEMA", snapshot_file)
    assert schema.main(["--write"]) == 0
    assert schema.main(["--check"]) == 0
    events_file.write_text("{}\n")
    capsys.readouterr()
    assert schema.main(["--check"]) == 1
    assert capsys.readouterr().err == f"{events_file} is stale: run make schema\n"


def test_the_schemas_show_the_discriminated_unions() -> None:
    events = schema.events_schema()
    union = events["$defs"]["Event"]
    assert union["discriminator"]["propertyName"] == "type"
    assert sorted(union["discriminator"]["mapping"]) == sorted(EVENT_TYPES)
    assert len(union["oneOf"]) == len(schema.event_models())
    lines = schema.snapshot_schema()
    assert lines["discriminator"]["propertyName"] == "kind"
    assert sorted(lines["discriminator"]["mapping"]) == sorted(snapshot.KINDS)


def test_every_model_and_field_of_the_schemas_is_described() -> None:
    for generated in (schema.events_schema(), schema.snapshot_schema()):
        assert generated["title"] and generated["description"]
        for name, definition in generated["$defs"].items():
            assert definition.get("description"), name
            for field, prop in definition.get("properties", {}).items():
                assert prop.get("description"), f"{name}.{field}"


# --- docs/events.md ------------------------------------------------------------------------------


def test_every_event_type_and_every_field_is_in_the_doc() -> None:
    text = EVENTS_DOC.read_text()
    missing = [t for t in EVENT_TYPES if f"`{t}`" not in text]
    for model in schema.event_models():
        for name, fields in fields_of(model).items():
            missing += [f"{name}.{f}" for f in sorted(fields) if f"`{f}`" not in text]
    assert not missing, f"not in docs/events.md: {', '.join(missing)}"


def test_each_event_type_has_a_section_naming_its_data_fields() -> None:
    found = sections(EVENTS_DOC)
    for model in schema.event_models():
        types_ = typing.get_args(model.model_fields["type"].annotation)
        heading = ", ".join(f"`{t}`" for t in types_)
        assert heading in found, f"no section '### {heading}' in docs/events.md"
        data = models_in(model.model_fields["data"].annotation)[0]
        fields = {f for name, fs in fields_of(data).items() for f in fs}
        missing = sorted(f for f in fields if f"`{f}`" not in found[heading])
        assert not missing, f"section {heading} does not name {missing}"


def test_the_doc_names_no_event_type_that_does_not_exist() -> None:
    named = set(re.findall(r"`((?:user|group|app)\.[a-z_]+)`", EVENTS_DOC.read_text()))
    assert named <= set(EVENT_TYPES), sorted(named - set(EVENT_TYPES))


def test_the_examples_in_the_doc_are_valid_events_of_every_type() -> None:
    blocks = code_blocks(EVENTS_DOC, "json")
    seen = set()
    for block in blocks:
        try:
            seen |= {event.type for event in parse_events(block)}
        except EventError as error:
            pytest.fail(f"invalid example in docs/events.md ({error}):\n{block}")
    assert seen == set(EVENT_TYPES), f"no example of {sorted(set(EVENT_TYPES) - seen)}"


def test_the_readme_sums_up_the_contract_and_points_to_the_doc() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Events (contract v1)\n", 1)[1].split("\n## ", 1)[0]
    assert "(docs/events.md)" in section and "POST /v1/events" in section
    examples = re.findall(r"^```json\n(.*?)^```$", section, re.M | re.S)
    assert examples and all(parse_events(example) for example in examples)


def test_the_stored_form_in_the_doc_is_what_the_engine_stores() -> None:
    [stored] = [b for b in code_blocks(EVENTS_DOC, "text") if '"v":' in b]
    document = json.loads(stored)
    version = document.pop("v")
    assert wire(parse_event(document)).decode() == stored.strip()
    sent = json.loads(code_blocks(EVENTS_DOC, "json")[0])  # the envelope's example
    assert sent["id"] == document["id"] and version.endswith(" " + sent["id"])
    assert wire(parse_event(sent)) == wire(parse_event(document))


def _webhook_answers() -> tuple[set[tuple[int, str]], set[str]]:
    """The (status, error) pairs of ``producers/webhook.py``'s refusals, and every error code."""
    tree = ast.parse((ROOT / "producers" / "webhook.py").read_text())
    pairs, codes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "error"
                    and isinstance(value, ast.Constant)
                ):
                    codes.add(value.value)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        args = node.args
        if len(args) < 2 or not isinstance(args[0], ast.Constant):
            continue
        if node.func.id == "Refused" and isinstance(args[1], ast.Constant):
            pairs.add((args[0].value, args[1].value))
        elif node.func.id == "Response" and isinstance(args[1], ast.Dict):
            for key, value in zip(args[1].keys, args[1].values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "error":
                    assert isinstance(value, ast.Constant)
                    pairs.add((args[0].value, value.value))
    return pairs, codes | {error for _, error in pairs}


def test_every_answer_of_the_webhook_is_in_the_doc() -> None:
    pairs, codes = _webhook_answers()
    assert (422, "invalid_events") in pairs and "method_not_allowed" in codes  # the parser works
    rows = [line for line in EVENTS_DOC.read_text().splitlines() if line.startswith("| `")]
    missing = [f"{s} {e}" for s, e in sorted(pairs)
               if not any(f"| `{s}` | `{e}` |" in row for row in rows)]  # fmt: skip
    missing += [e for e in sorted(codes) if not any(f"| `{e}` |" in row for row in rows)]
    assert not missing, f"webhook answers not in docs/events.md's table: {missing}"


# --- the snapshot format -------------------------------------------------------------------------


def object_of(line: snapshot.Header | snapshot.Body) -> tuple[str, str]:
    """What a line describes: ``(kind, id)``."""
    if isinstance(line, snapshot.UserLine):
        return "user", line.user.id
    if isinstance(line, snapshot.GroupLine):
        return "group", line.group.id
    if isinstance(line, snapshot.AppLine):
        return "app", line.app_id
    return "snapshot", ""


def check_snapshot_lines(lines: list[str], where: str) -> None:
    """Valid lines, the header first and only there, each object on one line."""
    ids: set[tuple[str, str]] = set()
    for number, raw in enumerate(lines, start=1):
        line, problems = snapshot.parse_line(raw)
        assert line is not None, f"{where} line {number}: {problems}"
        assert snapshot.place_problem(number, line, number == 1) is None, f"{where} {number}"
        key = object_of(line)
        assert key not in ids, f"{where} line {number}: {key} again"
        ids.add(key)


def test_the_example_lines_of_the_snapshot_doc_parse() -> None:
    blocks = code_blocks(SNAPSHOT_DOC, "json")
    assert blocks
    for block in blocks:
        check_snapshot_lines([line for line in block.splitlines() if line.strip()], "snapshot.md")


def test_the_example_snapshot_parses() -> None:
    lines = [line for line in SNAPSHOT_EXAMPLE.read_text().splitlines() if line.strip()]
    check_snapshot_lines(lines, "examples/snapshot.jsonl")
    kinds = {json.loads(line)["kind"] for line in lines}
    assert kinds == set(snapshot.KINDS)


def test_every_line_kind_and_field_is_in_the_snapshot_doc() -> None:
    text = SNAPSHOT_DOC.read_text()
    missing = [f'"{k}"' for k in snapshot.KINDS if f'`"{k}"`' not in text]
    for model in LINE_MODELS:
        for name, fields in fields_of(model).items():
            missing += [f"{name}.{f}" for f in sorted(fields) if f"`{f}`" not in text]
    assert "snapshot.schema.json" in text
    assert not missing, f"not in docs/snapshot.md: {', '.join(missing)}"


# --- the schemas accept what the models accept ---------------------------------------------------

OK = {"id": "e1", "type": "group.member_added", "occurred_at": "2026-11-28T17:50:51Z",
      "data": {"group_id": "g-42", "user_id": "u-7"}}  # fmt: skip
USER = {"id": "e2", "type": "user.created", "occurred_at": "2026-11-28T17:50:51Z",
        "data": {"user": {"id": "u-7", "username": "ann", "state": "active"}}}  # fmt: skip
VALID_EVENTS = [
    OK,
    [OK, USER],
    [],
    {**USER, "data": {"user": {**USER["data"]["user"], "email": None, "department": "Sales"}}},
    {**OK, "type": "app.user_associated", "data": {"app_id": "zscaler", "user_id": "u-7"}},
]
INVALID_EVENTS = [
    {**OK, "type": "group.member_add"},
    {key: value for key, value in OK.items() if key != "type"},
    {**OK, "v": "01795888251000000 e1"},
    {**OK, "data": {"group_id": "g-42"}},
    {**OK, "data": {"group_id": "g-42", "user_id": "u-7", "x": 1}},
    {**OK, "data": {"group_id": "g*", "user_id": "u-7"}},
    {**OK, "data": {"group_id": "g 42", "user_id": "u-7"}},
    {**OK, "data": {"group_id": 42, "user_id": "u-7"}},
    {**OK, "id": ""},
    {**OK, "id": "x" * 129},
    {**OK, "occurred_at": 1700000000},
    {**OK, "type": "user.deleted"},  # the data of another type
    {**USER, "data": {"user": {**USER["data"]["user"], "state": "gone"}}},
    {**USER, "data": {"user": {**USER["data"]["user"], "firstname": "x" * 257}}},
    {**USER, "data": {"user": {"id": "u-7", "state": "active"}}},
    [OK, {**OK, "data": {}}],
    "e1",
    None,
]
VALID_LINES = [
    {"kind": "snapshot", "taken_at": "2026-11-29T06:00:00Z", "source": "example:acme"},
    {"kind": "group", "group": {"id": "g-42", "name": "Sales"}, "members": []},
    {"kind": "app", "app_id": "zscaler", "groups": ["g-42"], "users": ["u-3"]},
]
INVALID_LINES = [
    {"kind": "snapshots", "taken_at": "2026-11-29T06:00:00Z", "source": "example:acme"},
    {"kind": "snapshot", "taken_at": "2026-11-29T06:00:00Z", "source": ""},
    {"kind": "group", "group": {"id": "g-42", "name": "Sales"}},
    {"kind": "group", "group": {"id": "g-42", "name": "Sales"}, "members": ["u-1", "u-1"]},
    {"kind": "app", "app_id": "zscaler", "groups": [], "users": [], "size": 1},
    {"kind": "user", "user": {"id": "u-7", "username": "ann", "state": "gone"}},
]


@pytest.fixture(scope="module")
def jsonschema() -> types.ModuleType:
    return pytest.importorskip("jsonschema")


def test_the_schemas_are_valid_json_schemas(jsonschema: types.ModuleType) -> None:
    for generated in (schema.events_schema(), schema.snapshot_schema()):
        jsonschema.Draft202012Validator.check_schema(generated)


@pytest.mark.parametrize("document", VALID_EVENTS, ids=range(len(VALID_EVENTS)))
def test_the_events_schema_accepts_what_the_contract_accepts(
    jsonschema: types.ModuleType, document: Any
) -> None:
    parse_events(json.dumps(document))
    jsonschema.validate(document, schema.events_schema())


@pytest.mark.parametrize("document", INVALID_EVENTS, ids=range(len(INVALID_EVENTS)))
def test_the_events_schema_refuses_what_the_contract_refuses(
    jsonschema: types.ModuleType, document: Any
) -> None:
    with pytest.raises(EventError):
        parse_events(json.dumps(document))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema.events_schema())


def test_the_doc_examples_are_valid_against_the_events_schema(
    jsonschema: types.ModuleType,
) -> None:
    validator = jsonschema.Draft202012Validator(schema.events_schema())
    for block in code_blocks(EVENTS_DOC, "json"):
        validator.validate(json.loads(block))


def test_the_snapshot_schema_agrees_with_the_line_models(jsonschema: types.ModuleType) -> None:
    validator = jsonschema.Draft202012Validator(schema.snapshot_schema())
    for line in VALID_LINES + [json.loads(raw) for raw in SNAPSHOT_EXAMPLE.read_text().split("\n")
                               if raw.strip()]:  # fmt: skip
        assert snapshot.parse_line(line)[0] is not None, line
        validator.validate(line)
    for line in INVALID_LINES:
        assert snapshot.parse_line(line)[0] is None, line
        assert not validator.is_valid(line), line


# --- nothing outside the repository -----------------------------------------------------------


def test_no_tracked_file_refers_to_anything_outside_the_repository() -> None:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    needles = [("../" + "shared").encode(), ("DESIGN " + "§").encode()]  # not this file's text
    found = []
    for name in listed.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file():
            content = path.read_bytes()
            found += [f"{name}: {n.decode()}" for n in needles if n in content]
    assert not found, "\n".join(found)
