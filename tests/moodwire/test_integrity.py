"""Models proven before they serve: checksums, a smoke batch, clear refusals.

On copies of the real fine-tuned v1 (the session's ``model_registry``): a
tampered, incomplete or unverifiable version is refused at load, naming the
version and the file; the worker will not start on one; ``moodwire models
--verify`` says which versions would be refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import last_json, moodwire_cli, settings_env

from learner.classifier import SentimentClassifier
from learner.errors import ModelLoadError
from learner.loading import SMOKE_TEXTS, load_version
from moodwire.settings import Settings
from state.registry import Registry, VersionIntegrityError


@pytest.fixture
def registry(model_registry: Path, tmp_path: Path) -> Registry:
    """A copy of the session's registry: v1, the real fine-tuned model, serving."""
    root = tmp_path / "registry"
    shutil.copytree(model_registry, root)
    return Registry(root)


def _writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def _flip_a_byte(path: Path) -> None:
    """One byte in the tensor data, past the safetensors header: the file still loads."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    _writable(path).write_bytes(bytes(data))


def _refusal(registry: Registry, version: str = "v1") -> Exception:
    with pytest.raises((VersionIntegrityError, ModelLoadError)) as caught:
        load_version(registry, version, device="cpu")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"version {version} refused: ")
    return caught.value


def test_an_untouched_version_loads_and_passes_its_smoke_batch(registry: Registry) -> None:
    files = registry.card("v1")["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert "card.json" not in files
    clf = load_version(registry, "v1", device="cpu")
    probs = clf.predict_proba(list(SMOKE_TEXTS))
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-3)


def test_a_flipped_byte_in_the_weights_is_refused_naming_the_file(registry: Registry) -> None:
    weights = registry.path("v1") / "model.safetensors"
    _flip_a_byte(weights)
    SentimentClassifier.from_pretrained(registry.path("v1"), device="cpu")  # it would load
    err = _refusal(registry)
    assert isinstance(err, VersionIntegrityError) and err.file == "model.safetensors"
    assert "model.safetensors has changed" in str(err)


def test_a_deleted_tokenizer_is_refused_naming_the_file(registry: Registry) -> None:
    (registry.path("v1") / "tokenizer.json").unlink()
    err = _refusal(registry)
    assert isinstance(err, VersionIntegrityError) and err.file == "tokenizer.json"
    assert "tokenizer.json is missing" in str(err)


def test_an_extra_file_is_refused_naming_it(registry: Registry) -> None:
    (registry.path("v1") / "pytorch_model.bin").write_bytes(b"a pickle would go here")
    err = _refusal(registry)
    assert isinstance(err, VersionIntegrityError) and err.file == "pytorch_model.bin"
    assert "pytorch_model.bin is not one of its files" in str(err)


def test_a_card_without_checksums_is_refused_with_what_to_do(registry: Registry) -> None:
    card_file = registry.path("v1") / "card.json"
    card = json.loads(card_file.read_text())
    del card["files"]  # as every card written before checksums were recorded
    _writable(card_file).write_text(json.dumps(card))
    err = _refusal(registry)
    assert isinstance(err, VersionIntegrityError) and err.file == "card.json"
    assert "records no checksums" in str(err) and "moodwire bootstrap" in str(err)


def test_nan_weights_are_refused_by_the_smoke_batch(registry: Registry) -> None:
    clf = SentimentClassifier.from_pretrained(registry.path("v1"), device="cpu")
    with torch.no_grad():
        clf.model.classifier.weight.fill_(float("nan"))
    version = registry.write_version(clf.save, {"kind": "test", "parent": "v1"})
    registry.verify(version)  # its checksums match: the files are what was written
    err = _refusal(registry, version)
    assert isinstance(err, ModelLoadError) and "non-finite probabilities" in str(err)


# -- the command line -------------------------------------------------------------------


def _env(registry: Registry, tmp_path: Path) -> dict[str, str]:
    settings = Settings(
        registry=registry.root,
        data_dir=tmp_path / "data",
        bootstrap_servers="127.0.0.1:1",  # never reached: the model is refused first
        device="cpu",
    )
    return settings_env(settings)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_a_worker_started_on_a_tampered_version_exits_with_one_line(
    registry: Registry, tmp_path: Path
) -> None:
    _flip_a_byte(registry.path("v1") / "model.safetensors")
    res = moodwire_cli(["worker"], env=_env(registry, tmp_path), timeout=180)
    assert res.returncode != 0
    line = _one_line(res.stderr)
    assert line.startswith("moodwire worker: version v1 refused: model.safetensors has changed")


def test_a_garbage_pointer_is_one_line_from_models_and_worker(
    registry: Registry, tmp_path: Path
) -> None:
    registry.serving_file.write_text('{"version": "v1", "history": "v1')
    env = _env(registry, tmp_path)
    for command in ("models", "worker"):
        res = moodwire_cli([command], env=env, timeout=180)
        assert res.returncode == 2, res.stderr[-3000:]
        line = _one_line(res.stderr)
        assert line.startswith(f"moodwire {command}: ")
        assert str(registry.serving_file) in line and "not valid JSON" in line


def test_models_verify_exits_1_naming_each_refused_version(
    registry: Registry, tmp_path: Path
) -> None:
    env = _env(registry, tmp_path)
    v1 = registry.path("v1")
    copy = registry.write_version(
        lambda d: shutil.copytree(
            v1, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("card.json")
        ),
        {"kind": "test"},
    )
    res = moodwire_cli(["models", "--verify"], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["version"]: r for r in last_json(res.stdout)["versions"]}
    assert {v: (r["verified"], r["problem"]) for v, r in rows.items()} == {
        "v1": (True, None),
        copy: (True, None),
    }
    plain = moodwire_cli(["models"], env=env)  # without the flag: the usual listing
    assert plain.returncode == 0 and "verified" not in last_json(plain.stdout)["versions"][0]

    (registry.path("v1") / "tokenizer.json").unlink()
    _flip_a_byte(registry.path(copy) / "model.safetensors")
    res = moodwire_cli(["models", "--verify"], env=env)
    assert res.returncode == 1
    out = last_json(res.stdout)
    assert out["serving"] == "v1"
    rows = {r["version"]: r for r in out["versions"]}
    assert not rows["v1"]["verified"] and "tokenizer.json is missing" in rows["v1"]["problem"]
    assert not rows[copy]["verified"] and "model.safetensors" in rows[copy]["problem"]
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("moodwire")]
    assert lines == [
        f"moodwire models: {rows['v1']['problem']}",
        f"moodwire models: {rows[copy]['problem']}",
    ]


# -- the learner ------------------------------------------------------------------------


def _copy_of_v1(registry: Registry) -> str:
    v1 = registry.path("v1")
    return registry.write_version(
        lambda d: shutil.copytree(
            v1, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("card.json")
        ),
        {"kind": "test", "parent": "v1"},
    )


def test_the_learner_keeps_its_model_when_an_operator_promotes_a_refused_version(
    registry: Registry, tmp_path: Path
) -> None:
    from structlog.testing import capture_logs

    from moodwire.processes.learner import LearnerProcess
    from state.store import Store

    settings = Settings(registry=registry.root, data_dir=tmp_path / "data", device="cpu")
    loaded: list[str] = []

    def load(version: str) -> SentimentClassifier:
        loaded.append(version)
        return load_version(registry, version, device="cpu")

    store = Store(f"sqlite:///{tmp_path / 'learner.db'}")
    # No Kafka needed: following the serving pointer touches neither consumer nor producer.
    proc = LearnerProcess(settings, store, registry, None, None, load)  # type: ignore[arg-type]
    model = proc.learner.classifier
    bad = _copy_of_v1(registry)
    registry.promote(bad)  # verified when promoted, tampered afterwards
    _flip_a_byte(registry.path(bad) / "model.safetensors")
    with capture_logs() as logs:
        for _ in range(3):  # the learner's loop asks on every poll
            proc.sync_serving()
    assert proc.learner.version == "v1" and proc.learner.classifier is model
    assert loaded == ["v1", bad]  # tried once, not on every poll
    (refused,) = [e for e in logs if e["event"] == "learner_serving_refused"]
    assert refused["version"] == bad and refused["serving"] == "v1"
    assert "model.safetensors has changed" in refused["reason"]

    good = _copy_of_v1(registry)
    registry.promote(good)
    proc.sync_serving()
    assert proc.learner.version == good and loaded[-1] == good


@pytest.mark.integration
def test_a_learner_started_on_a_tampered_version_exits_with_one_line(
    settings: Settings, registry: Registry, tmp_path: Path
) -> None:
    (registry.path("v1") / "tokenizer.json").unlink()
    env = settings_env(settings.with_overrides(registry=registry.root))
    res = moodwire_cli(["learner"], env=env, timeout=180)
    assert res.returncode == 2
    line = [x for x in res.stderr.strip().splitlines() if x.startswith("moodwire")]
    assert line == ["moodwire learner: version v1 refused: tokenizer.json is missing"], res.stderr
    assert "Traceback" not in res.stderr
