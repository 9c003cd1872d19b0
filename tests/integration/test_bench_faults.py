"""``moodwire bench faults``: a short run through the real command line, and proof that
its counts count (items really deleted are reported lost; a registry that lies is caught)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import last_json, moodwire_cli, settings_env

from moodwire.bench.faults import (
    PARTS,
    VARIANTS,
    Bench,
    Processes,
    check_learner,
    count_delivery,
    summarise,
    table,
    worker_kills,
)
from moodwire.settings import Settings
from state.registry import Registry
from state.store import Store, items


@pytest.mark.integration
def test_a_short_run_fuzzes_kills_and_tampers_for_real(
    settings: Settings, model_registry: Path, tmp_path: Path
) -> None:
    out = tmp_path / "faults.json"
    args = ["bench", "faults", "--only", "fuzz", "worker_kills", "tampered"]
    args += ["--fuzz-cases", "200", "--kills", "2", "--items", "200", "--seed", "3"]
    args += ["--registry", str(model_registry), "--data-dir", str(tmp_path), "--out", str(out)]
    done = moodwire_cli(args, env=settings_env(settings), timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    result = last_json(done.stdout)
    assert json.loads(out.read_text()) == result
    assert list(result["parts"]) == ["fuzz", "worker_kills", "tampered"]
    assert result["passed"] is True and result["errors"] == 0
    assert (result["crashes"], result["lost"], result["duplicated"], result["violations"]) == (
        0,
        0,
        0,
        0,
    )

    fuzz = result["parts"]["fuzz"]
    assert len(fuzz["targets"]) == 9 and fuzz["trials"] == 9 * 200
    assert {"validator", "label_message", "control_message", "csv_loader"} <= set(fuzz["targets"])
    assert all(t["cases"] == 200 and t["accepted"] > 0 for t in fuzz["targets"].values())

    kills = result["parts"]["worker_kills"]
    assert kills["trials"] == 2 and kills["runs"] == 1
    run = kills["runs_detail"][0]
    assert len(run["kills"]) == 2 and run["produced"] == run["stored"] == run["published"] == 200
    # Each killed worker had work left, and each restart was timed to its next stored item.
    assert all(k["stored_before"] < 200 and k["after_s"] > 0 for k in run["kills"])
    assert run["recoveries_s"] and kills["max_recovery_s"] > 0
    assert result["max_recovery_s"] == kills["max_recovery_s"]

    tampered = result["parts"]["tampered"]
    assert tampered["trials"] == 10 and tampered["served_when_it_should_not"] == 0
    assert set(tampered["variants"]) == set(VARIANTS)
    for variant, outcome in tampered["variants"].items():
        start, swap = outcome["at_start"], outcome["at_swap"]
        assert start["exit_code"] not in (0, None) and start["one_line"], (variant, start)
        assert start["stderr"].startswith("moodwire worker: "), start
        assert swap["logged"] and swap["kept_serving"] and swap["items_scored_by_it"] == 0
    assert "model.safetensors" in tampered["variants"]["flipped_byte"]["at_swap"]["reason"]
    assert "non-finite" in tampered["variants"]["nan_weights"]["at_start"]["stderr"]

    lines = [line for line in done.stderr.splitlines() if not line.startswith(("{", "["))]
    table_lines = lines[-5:]
    assert table_lines[0].split()[:2] == ["part", "trials"]
    assert [line.split()[0] for line in table_lines[1:]] == [
        "fuzz",
        "worker_kills",
        "tampered",
        "total",
    ]
    assert "PASSED" in table_lines[-1]
    assert not list((tmp_path / "bench-faults").glob("work-*"))  # cleaned up after a pass


@pytest.mark.integration
def test_items_deleted_before_the_count_are_reported_lost(
    settings: Settings, model_registry: Path, tmp_path: Path
) -> None:
    procs = Processes()
    bench = Bench(
        settings=settings.with_overrides(data_dir=tmp_path),
        work=tmp_path / "work",
        registry=model_registry,
        bootstrap=settings.bootstrap_servers,
        pg_admin=None,
        seed=5,
        procs=procs,
        say=lambda _message: None,
    )
    deleted: list[str] = []

    def lose_seven(store: Store) -> None:
        ids = store.item_ids()[:7]
        with store.engine.begin() as conn:
            conn.execute(items.delete().where(items.c.id.in_(ids)))
        deleted.extend(ids)

    try:
        part = worker_kills(bench, kills=1, items=120, before_count=lose_seven)
    finally:
        procs.close()
    assert part["trials"] == 1 and len(deleted) == 7
    run = part["runs_detail"][0]
    assert (run["lost"], run["lost_in_store"], run["lost_on_scored"]) == (7, 7, 0)
    assert part["lost"] == 7 and part["duplicated"] == 0
    totals = summarise({"worker_kills": part})
    assert totals["lost"] == 7 and totals["passed"] is False
    assert "FAILED" in table(totals)


def test_count_delivery_counts_each_kind_of_loss_and_duplicate() -> None:
    tally = count_delivery(
        ["a", "b", "c", "d"], stored=["a", "b", "b", "c"], scored=["a", "a", "a", "b"]
    )
    assert tally == {
        "produced": 4,
        "stored": 3,
        "published": 2,
        "lost": 2,  # d never stored, c stored but never published
        "lost_in_store": 1,
        "lost_on_scored": 1,
        "duplicated": 3,  # b twice in the store, a three times on news.scored
        "duplicated_in_store": 1,
        "duplicated_on_scored": 2,
    }
    clean = count_delivery(["a"], stored=["a"], scored=["a"])
    assert clean["lost"] == clean["duplicated"] == 0


def test_summarise_fails_on_any_figure_or_a_broken_part() -> None:
    ok = {"fuzz": {"trials": 10, "crashes": 0}, "db_outage": {"max_recovery_s": 3.5, "lost": 0}}
    assert summarise(ok)["passed"] and summarise(ok)["max_recovery_s"] == 3.5
    for bad in ({"crashes": 1}, {"lost": 2}, {"duplicated": 1}, {"violations": 1}, {"error": "x"}):
        assert not summarise({**ok, "tampered": bad})["passed"], bad
    assert set(PARTS) == {
        "fuzz",
        "worker_kills",
        "learner_kills",
        "broker_restart",
        "db_outage",
        "tampered",
    }


class _Rig:
    """What the learner check reads: a registry, a store, what was verified before."""

    def __init__(self, root: Path) -> None:
        self.registry = Registry(root / "registry")
        self.store = Store(f"sqlite:///{root / 'store.db'}")
        self.verified: set[str] = set()
        self.initial_history = 0


def _version(registry: Registry) -> str:
    return registry.write_version(lambda d: (d / "weights.txt").write_text("w"), {"kind": "t"})


def test_the_learner_check_catches_unaudited_and_phantom_promotions_and_half_versions(
    tmp_path: Path,
) -> None:
    rig = _Rig(tmp_path)
    v1 = _version(rig.registry)
    with rig.store.audited("learner", "promote", v1, "gate passed", {}):
        rig.registry.promote(v1)
    problems: dict[str, str] = {}
    check_learner(rig, problems)
    assert problems == {} and rig.verified == {v1}

    v2 = _version(rig.registry)
    rig.registry.promote(v2)  # the pointer moved; its audit row never committed
    rig.store.audit("learner", "promote", "v9", "claimed", {})  # a promotion never made
    half = rig.registry.root / "versions" / ".incoming-dead"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    v3 = _version(rig.registry)
    weights = rig.registry.path(v3) / "weights.txt"
    weights.chmod(0o644)
    weights.write_text("changed")
    check_learner(rig, problems)
    assert sorted(problems.values()) == [
        "audit row claims a promotion to v9 never made",
        "half-written version directory left behind: .incoming-dead (10 bytes)",
        f"half-written version {v3}: version {v3} refused: weights.txt has changed "
        "(size differs from its card)",
        f"promotion to {v2} has no audit row",
    ]
    shutil.rmtree(half)
    rig.store.engine.dispose()
