"""The package layout: imports go one way.

Every import counts, lazy ones inside functions included. The packages, from the bottom up:

- ``worker.contract``: the event contract and the plain data the parts exchange;
- ``worker.store``: everything kept in Redis;
- ``worker.queue``: publishing, Celery's messages, the reconcile queue, the sweeper;
- ``worker.scim``: the SCIM client and what it knows of each kind of app;
- ``worker.sync``: rules, planning, reconciling, verifying;
- ``worker.apps``: an app's life (activation, mappings, import, rebuild);
- ``producers``: the webhook receiver, replay, snapshots, the JumpCloud connector;
- ``worker.tasks`` (the worker process), ``worker.devstack`` (the local stack), ``worker.cli``.

``worker.config``, ``worker.observability`` and ``worker.progress`` are leaves anyone may use;
``worker.config`` imports nothing of the project, the other leaves only ``worker.config``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEAVES = {"worker.config", "worker.observability", "worker.progress"}
LAYERS = [
    "worker.contract",
    "worker.store",
    "worker.queue",
    "worker.scim",
    "worker.sync",
    "worker.apps",
    "producers",
    "worker.tasks",
    "worker.devstack",
    "worker.cli",
]
# what producers may use of the engine: the contract, the front door of the queue, the store
PRODUCERS_MAY_IMPORT = {"worker.contract", "worker.queue", "worker.store", *LEAVES}


def _unit(module: str) -> str:
    """The package a module belongs to: ``producers`` or ``worker.<part>``."""
    parts = module.split(".")
    if parts[0] == "producers":
        return "producers"
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _imports() -> dict[str, set[tuple[str, str]]]:
    """``{package: {(imported package, "file:line"), …}}`` over every module of the project."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for top in ("worker", "producers"):
        for path in (ROOT / top).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [f"{node.module}.{a.name}" for a in node.names]
                    targets = names if node.module in ("worker", "producers") else [node.module]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                else:
                    continue
                for target in targets:
                    if target.split(".")[0] in ("worker", "producers"):
                        source, dest = _unit(module), _unit(target)
                        if source != dest:
                            where = f"{path.relative_to(ROOT)}:{node.lineno}"
                            found[source].add((dest, where))
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_import_cycle_between_packages() -> None:
    graph = {source: {dest for dest, _ in targets} for source, targets in _imports().items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_every_package_imports_only_lower_layers_and_leaves() -> None:
    wrong = []
    for source, targets in _imports().items():
        if source in LEAVES:
            wrong += [f"{where}: the leaf {source} imports {d}" for d, where in targets
                      if source == "worker.config" or d != "worker.config"]  # fmt: skip
            continue
        assert source in LAYERS, f"{source} is in no layer: add it to LAYERS (and the README)"
        rank = LAYERS.index(source)
        for dest, where in sorted(targets):
            if dest not in LEAVES and (dest not in LAYERS or LAYERS.index(dest) > rank):
                wrong.append(f"{where}: {source} imports {dest}, a layer above it")
    assert not wrong, "\n".join(wrong)


def test_producers_use_only_the_contract_the_queue_and_the_store() -> None:
    wrong = [
        f"{where}: producers import {dest}"
        for dest, where in sorted(_imports()["producers"])
        if dest not in PRODUCERS_MAY_IMPORT
    ]
    assert not wrong, "\n".join(wrong)
