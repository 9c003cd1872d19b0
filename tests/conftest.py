"""Shared fixtures: a real broker, a real (briefly fine-tuned) model, real databases."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TEST_LABEL_ORIGINS, TEST_ORIGINS

from learner.config import LearnerConfig
from moodwire.bench.faults import pg_database, postgresql_reachable
from moodwire.settings import Settings, Topics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get(
    "MOODWIRE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A Tansu broker on a free loopback port for the whole session."""
    from stream.broker import EmbeddedBroker, free_port

    b = EmbeddedBroker(port=free_port()).start()
    try:
        yield b.bootstrap_servers
    finally:
        b.stop()


@pytest.fixture(scope="session")
def model_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose v1 is the default encoder, really fine-tuned (two short epochs)."""
    from learner.classifier import SentimentClassifier
    from learner.data import LabelledText
    from learner.train import TrainConfig, fine_tune
    from state.registry import Registry
    from stream.synthetic import labelled_headlines

    root = tmp_path_factory.mktemp("registry")
    clf = SentimentClassifier.from_encoder(device="cpu")
    data = [LabelledText(r["text"], r["label"]) for r in labelled_headlines(240, seed=3)]
    # Bound by epochs, not time: on a loaded machine a time budget left it guessing
    # "negative" for nearly everything (seen while benchmarks ran beside the tests).
    fine_tune(
        clf, data, TrainConfig(epochs=2, lr=2e-4, batch_size=16, time_budget_s=300), progress=False
    )
    from learner.runtime import save_version

    reg = Registry(root)
    card = {"kind": "test", "parent": None}
    # As every product path writes one: weights plus the int8 ONNX export it serves with.
    version = reg.write_version(save_version(clf, card), card)
    reg.promote(version)
    return root


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def settings(broker: str, model_registry: Path, tmp_path: Path, unique: str) -> Settings:
    """Settings for one test: its own topics, group, store and index on the shared broker."""
    topics = Topics(
        **{name: f"{default}-{unique}" for name, default in Topics().model_dump().items()}
    )
    return Settings(
        bootstrap_servers=broker,
        data_dir=tmp_path,
        registry=model_registry,
        topics=topics,
        consumer_group=f"workers-{unique}",
        device="cpu",
        batch_size=32,
        # Every side signs what it sends, and the learner trains on the test labeller's.
        origins=TEST_ORIGINS,
        learner=LearnerConfig(label_origins=TEST_LABEL_ORIGINS),
    )


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    """A new PostgreSQL database on the local server, dropped afterwards."""
    if not postgresql_reachable(PG_ADMIN_URL):
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (CI must start it)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    with pg_database(PG_ADMIN_URL, prefix="moodwire_test") as url:
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database for the whole session (tests that count rows use ``pg_fresh``)."""
    with _pg_database() as url:
        yield url


@pytest.fixture
def pg_fresh() -> Iterator[str]:
    """A PostgreSQL database of this test's own: nothing another test wrote is in it."""
    with _pg_database() as url:
        yield url
