"""What pyproject.toml declares is what the code imports, and each extra stays in its place.

Read from the source (every import statement, inside functions too) and from the
installed distributions' own metadata (which distribution provides which module).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("moodwire", "dashboard", "stream", "learner", "retrieval", "state")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Where an extra's libraries may be imported: the development broker by the broker
# module, the benchmark-only libraries by the benchmarks (tests may import any of them).
EXTRA_PLACES = {"broker": ("stream/broker.py",), "bench": ("moodwire/bench/",)}
# Declared but reached through another library, not imported: psycopg is SQLAlchemy's
# PostgreSQL driver, crc32c is kafka-python's checksum in C, faiss-gpu-cu12 provides the
# same `faiss` module as faiss-cpu; and the development tools that scripts/test.sh runs
# as commands or pytest loads as a plugin.
NOT_IMPORTED = {"psycopg", "crc32c", "faiss-gpu-cu12", "ruff", "import-linter", "pytest-timeout"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(req: str) -> str:
    return _norm(re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0])


def _imports(base: str) -> dict[str, set[str]]:
    """Third-party top-level modules imported under ``base`` -> the files importing them."""
    ours = set(PACKAGES) | {"tests", "helpers", "doubles", "conftest", "secure"}
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / base).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ours or top.startswith("test_"):
                    continue
                found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


@functools.cache
def _provided_by() -> dict[str, list[str]]:
    return md.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {_norm(d) for d in _provided_by().get(module, [module])}


CORE = {_requirement(r) for r in PROJECT["dependencies"]}
EXTRAS = {
    k: {_requirement(r) for r in v if not r.startswith("moodwire[")}
    for k, v in PROJECT["optional-dependencies"].items()
}
CODE = {m: files for base in PACKAGES for m, files in _imports(base).items()}
TESTS = _imports("tests")


def test_every_library_the_code_imports_is_declared() -> None:
    declared = CORE.union(*EXTRAS.values())
    undeclared = {m: sorted(f)[:2] for m, f in CODE.items() if not _distributions(m) & declared}
    assert undeclared == {}


def test_every_library_the_tests_import_is_declared_for_development() -> None:
    dev = CORE.union(*EXTRAS.values())
    undeclared = {m: sorted(f)[:2] for m, f in TESTS.items() if not _distributions(m) & dev}
    assert undeclared == {}


def test_every_declared_dependency_is_imported() -> None:
    imported = {d for m in CODE for d in _distributions(m)}
    imported_by_tests = {d for m in TESTS for d in _distributions(m)}
    assert sorted(CORE - imported - NOT_IMPORTED) == []
    for extra, names in EXTRAS.items():
        unused = names - imported - imported_by_tests - NOT_IMPORTED
        assert sorted(unused) == [], f"extra {extra!r} declares libraries nothing imports"


def test_libraries_of_an_extra_are_imported_only_where_that_extra_is_installed() -> None:
    for extra, places in EXTRA_PLACES.items():
        for module, files in CODE.items():
            if not _distributions(module) & EXTRAS[extra] or _distributions(module) & CORE:
                continue
            strays = sorted(f for f in files if not f.startswith(places))
            assert strays == [], f"{module} (extra {extra!r}) imported outside {places}"


def test_the_dev_extra_installs_the_other_extras_the_tests_need() -> None:
    dev = " ".join(PROJECT["optional-dependencies"]["dev"])
    for extra in ("broker", "bench", "postgres"):
        assert re.search(rf"moodwire\[[^\]]*\b{extra}\b", dev), extra


def test_kafka_python_checksums_record_batches_in_c() -> None:
    # Without the crc32c extension kafka-python computes CRC32C in pure Python for every
    # batch it produces or fetches: most of the publish stage's time (bench throughput).
    from kafka.record import _crc32c, util

    assert util._crc32c is not _crc32c.crc
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
