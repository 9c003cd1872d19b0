"""The layering holds: import-linter's contracts, no module cycle at all, light commands.

Every import counts, at module level or inside a function (grimp reads them all).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("moodwire", "dashboard", "stream", "learner", "retrieval", "state")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    chosen = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *chosen],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_linter_contracts_are_kept() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("path", "line", "contract"),
    [
        ("state/__init__.py", "import stream.schemas", "ground-floor"),
        ("retrieval/index.py", "from learner import data", "layers"),
        ("dashboard/charts.py", "import torch", "dashboard-light"),
        ("dashboard/data.py", "from learner import train", "dashboard-light"),
        ("moodwire/settings.py", "import learner.train", "light-commands"),
        ("stream/scorer.py", "from learner import explain", "explain-on-demand"),
        ("stream/outage.py", "from stream import publish", "no-file-cycles"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(
    tmp_path: Path, path: str, line: str, contract: str
) -> None:
    """The contracts can fail: one planted import, anywhere in a function too, breaks one."""
    for name in (*PACKAGES, ".importlinter"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    target = tmp_path / path
    target.write_text(target.read_text() + f"\n\ndef _planted() -> None:\n    {line}\n")
    done = _lint_imports(tmp_path, contract)
    assert done.returncode != 0, done.stdout
    assert "1 broken" in done.stdout, done.stdout


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start) & modules)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    imported = graph.find_modules_directly_imported_by(child) & modules
                    work.append((child, iter(sorted(imported))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_module_imports_itself_through_others() -> None:
    """No cycle between any two files, a package's ``__init__`` and its modules included."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    modules = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    assert len(modules) > 60
    assert _cycles(graph, modules) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(m)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    graph.add_import(importer="a", imported="a.x")
    assert _cycles(graph, {"a", "a.x", "a.y", "a.z"}) == [["a.x", "a.y", "a.z"]]


LIGHT = [
    ["--help"],
    ["--version"],
    ["backtest", "--help"],
    ["stats"],
    ["alerts"],
    ["models"],
    ["promote", "v404", "--user", "ann"],
    ["rollback", "--user", "ann"],
    ["retrain", "--user", "ann"],
    ["users", "list"],
]

_PROBE = """
import runpy, sys
sys.argv = ["moodwire", *sys.argv[1:]]
try:
    runpy.run_module("moodwire", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "transformers", "sklearn") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), "CODE=" + str(code), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", LIGHT, ids=lambda a: " ".join(a))
def test_light_commands_import_neither_torch_nor_transformers(
    argv: list[str], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MOODWIRE_DATA_DIR": str(tmp_path),
        "MOODWIRE_CREDENTIAL": "op-password-long",
        "MOODWIRE_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing listens: fail, do not wait
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    probe = [ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert probe, done.stderr[-2000:]
    heavy, code = probe[-1].split()
    assert heavy == "HEAVY=", f"{' '.join(argv)} imported {heavy[6:]}"
    # The command ran to its end (answered, or refused with one line), not a traceback.
    assert code in ("CODE=0", "CODE=1", "CODE=2"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
