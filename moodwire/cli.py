"""``moodwire`` — one command line for every Moodwire process and operator action.

Settings come from ``MOODWIRE_*`` environment variables; the flags below
override them. Commands that report (``eval``, ``stats``, ``bench``) print one
JSON object as the last line of stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from argparse import SUPPRESS
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from moodwire import __version__, usercommands
from moodwire.cmdkit import COMMANDS, UserError
from moodwire.logs import configure_logging
from moodwire.settings import Settings

EPILOG = """\
getting started:
  moodwire demo                       everything on this machine, dashboard URL printed
  moodwire demo --headless --duration 60
  moodwire broker --port 9092         a development Kafka broker (Tansu) on loopback
  moodwire bootstrap --train FILE     train model v1 from a labelled CSV/JSONL file
  moodwire worker                     consume `news`, score, store, publish `news.scored`
  moodwire produce FILE --rate 50     publish a file as a live feed
  moodwire stats                      counts from the store, as JSON
  moodwire alerts --since 24h         alerts with their evidence (--json for all of it)
  moodwire dashboard --port 8501      the dashboard over the store, index and registry
  moodwire backtest FILE              replay a timestamped file through the alert rules
  moodwire explain "TEXT"             why the serving model gives TEXT its label, word by word
  moodwire store upgrade              migrate the store's schema (every process does on open)
  moodwire audit verify               check the audit log's hash chain (exit 1 if broken)

settings (environment, overridden by flags):
  MOODWIRE_BOOTSTRAP_SERVERS  Kafka bootstrap servers        (127.0.0.1:9092)
  MOODWIRE_STORE_URL          sqlite:///PATH or postgresql://…  (DATA_DIR/moodwire.db)
  MOODWIRE_REGISTRY           model registry directory        (DATA_DIR/registry)
  MOODWIRE_DATA_DIR           where state lives by default    (./moodwire-data)
  MOODWIRE_DEVICE             auto | cpu | cuda[:N]           (auto)
  MOODWIRE_USER               the Moodwire user a CLI action runs as (default: your login)
  MOODWIRE_CREDENTIAL         that user's password (else --credential-file, else a prompt
                              on a terminal); users: `moodwire users add NAME --role ROLE`
"""


def _batch_sizes(spec: str) -> tuple[int, ...]:
    """``"64,256"`` -> ``(64, 256)``: positive batch sizes.

    >>> _batch_sizes("64, 256")
    (64, 256)
    """
    try:
        sizes = tuple(int(part) for part in spec.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers, got {spec!r}") from None
    if not sizes or min(sizes) < 1 or max(sizes) > 65536:
        raise argparse.ArgumentTypeError(f"batch sizes must be 1..65536, got {spec!r}")
    return sizes


def _number(spec: str, ok: Callable[[float], bool], allowed: str) -> float:
    """``spec`` as a float that ``ok`` accepts (NaN fails every comparison), else one error."""
    try:
        value = float(spec)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds must be a number, got {spec!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"seconds must be {allowed}, got {spec!r}")
    return value


def _seconds(spec: str) -> float:
    """Seconds, 0 (off) to an hour; not NaN or infinity.

    >>> _seconds("30")
    30.0
    """
    return _number(spec, lambda v: 0 <= v <= 3600, "0..3600")


def _non_negative_int(spec: str) -> int:
    """A count, 0 or more.

    >>> _non_negative_int("3")
    3
    """
    try:
        value = int(spec)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {spec!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {spec!r}")
    return value


def _budget(spec: str) -> float:
    """Seconds of a time budget: positive and finite.

    >>> _budget("600")
    600.0
    """
    return _number(spec, lambda v: 0 < v < float("inf"), "positive and finite")


def _common(p: argparse.ArgumentParser) -> None:
    # No defaults (SUPPRESS): a flag given at either level (``bench --data-dir X throughput``
    # or ``bench throughput --data-dir X``) is kept, not overwritten by the other's default.
    g = p.add_argument_group("connections (override MOODWIRE_* environment)")
    g.add_argument(
        "--bootstrap-servers", default=SUPPRESS, help="Kafka bootstrap servers, host:port[,…]"
    )
    g.add_argument(
        "--store",
        dest="store_url",
        default=SUPPRESS,
        help="store URL: sqlite:///PATH or postgresql://…",
    )
    g.add_argument("--registry", type=Path, default=SUPPRESS, help="model registry directory")
    g.add_argument(
        "--data-dir", type=Path, default=SUPPRESS, help="default home of store, registry and index"
    )
    g.add_argument("--device", default=SUPPRESS, help="auto, cpu, cuda or cuda:N")
    g.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=SUPPRESS,
        help="log level (info)",
    )


def _operator_args(p: argparse.ArgumentParser) -> None:
    """Flags of an operator action: why, and the user (with its password) it runs as."""
    p.add_argument("--reason", default="", help="why: written to the audit log")
    p.add_argument(
        "--user",
        default=None,
        help="the Moodwire user to act as, written to the audit log (default: MOODWIRE_USER, "
        "else your login name); needs the operator role",
    )
    p.add_argument(
        "--credential-file",
        type=Path,
        metavar="PATH",
        help="file holding that user's password; default: MOODWIRE_CREDENTIAL, else a prompt "
        "when stdin is a terminal",
    )


def _labelled_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-col", help="column holding the text (default: auto-detect)")
    p.add_argument("--label-col", help="column holding the label (default: auto-detect)")
    p.add_argument(
        "--label-map", help="map other label schemes, e.g. 0=negative,1=positive,2=neutral"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moodwire",
        description="Moodwire: a continual-learning streaming monitor for financial text.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"moodwire {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description or help_)
        _common(p)
        return p

    p = add(
        "demo",
        "run everything locally: broker, model, generated feed, worker (and dashboard)",
        "Start an embedded broker, bootstrap a model on generated headlines if none serves, "
        "and stream a generated feed (with a scripted surge and drift) through a worker. "
        "Ctrl-C stops everything it started.",
    )
    p.add_argument("--headless", action="store_true", help="no dashboard (for scripts)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (status every 10 s, and each event) instead of a live "
        "panel on a terminal or plain lines elsewhere",
    )
    p.add_argument(
        "--duration",
        type=float,
        help="stop cleanly after this many seconds of streaming (set-up not counted)",
    )
    p.add_argument("--rate", type=float, default=20.0, help="feed items per second (20)")
    p.add_argument(
        "--items",
        type=int,
        default=6000,
        help="items in the scripted feed (a surge at 18%%, a drift at 30%%); the feed then goes "
        "on in the drifted regime until stopped (6000)",
    )
    p.add_argument(
        "--label-fraction", type=float, default=0.5, help="share of items analysts label (0.5)"
    )
    p.add_argument(
        "--label-delay", type=float, default=5.0, help="seconds before a label arrives (5)"
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed of the generated feed and labels (default: a new one each run, so a second "
        "run into the same data dir brings new items)",
    )
    p.add_argument("--dashboard-port", type=int, default=8501, help="port of the dashboard (8501)")

    p = add(
        "broker",
        "run the embedded Kafka-compatible broker (Tansu) for development",
        "Run Tansu on loopback with in-memory storage, create Moodwire's topics and print "
        "the bootstrap address. Stops on SIGTERM or Ctrl-C (data is not kept).",
    )
    p.add_argument("--port", type=int, default=9092, help="port to listen on (9092)")
    p.add_argument("--partitions", type=int, help="partitions per topic (4)")

    p = add(
        "worker",
        "consume `news` → score → store → publish `news.scored`",
        "Join the consumer group on the news topic and score items in batches. "
        "SIGTERM or Ctrl-C finishes the batch in hand, commits, and exits.",
    )
    p.add_argument("--group", help="consumer group (moodwire-worker)")
    p.add_argument("--batch-size", type=int, help="records per batch (MOODWIRE_BATCH_SIZE, 64)")
    p.add_argument("--max-items", type=int, help="exit after this many records (for scripts)")

    p = add(
        "learner",
        "labels → drift → replay fine-tune → gates → promote (one active instance)",
        "Consume `news.labels` and `moodwire.control`; store labels; watch the serving model's "
        "error stream for drift; on drift, an operator's `moodwire retrain`, or after "
        "MOODWIRE_LEARNER__RETRAIN_EVERY new labels, fine-tune a candidate on the new labels "
        "mixed with replayed old ones, shadow-score it on recent items, and promote it only if "
        "it beats the serving model on held-out new labels without losing more than "
        "MOODWIRE_LEARNER__OLD_TOLERANCE on held-out old ones. A second learner waits and takes "
        "over if the first dies. SIGTERM or Ctrl-C stops it (a training in progress is dropped; "
        "nothing is promoted half-way).",
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar while training")

    p = add(
        "dashboard",
        "serve the Streamlit dashboard: trends, alerts, drift & models, explore",
        "Serve the dashboard over the store (MOODWIRE_STORE_URL), the index and the registry. "
        "Users sign in with their name and password (`moodwire users add`; or OIDC where "
        "Streamlit's [auth] secrets are set); their role decides the actions shown and each "
        "action checks it again: analysts correct labels, operators retrain, promote, roll "
        "back, acknowledge and mute. Every action is written to the audit log with who and "
        "why. Ctrl-C stops it.",
    )
    p.add_argument("--port", type=int, default=8501, help="port to listen on (8501)")
    p.add_argument(
        "--address", default="127.0.0.1", help="address to listen on (127.0.0.1; 0.0.0.0 for all)"
    )

    p = add(
        "retrain",
        "ask the active learner to train a candidate now (operator action)",
        "Publish a retrain command on `moodwire.control` and write it to the audit log. The "
        "learner trains as soon as it has MOODWIRE_LEARNER__MIN_NEW_LABELS fresh labels. "
        "Needs a user with the operator role.",
    )
    _operator_args(p)

    p = add("produce", "publish a CSV/JSONL file as a live feed to `news`")
    p.add_argument("file", type=Path, help="CSV (delimiter sniffed) or JSONL file of items")
    p.add_argument("--text-col", help="column holding the text (default: auto-detect)")
    p.add_argument("--rate", type=float, help="at most this many items per second")
    p.add_argument(
        "--loop", action="store_true", help="replay the file forever (new ids each pass)"
    )
    p.add_argument(
        "--time-warp", type=float, help="replay the rows' own timestamps, this many times faster"
    )
    p.add_argument("--limit", type=int, help="send at most this many items")

    p = add(
        "bootstrap",
        "train the first model version from labelled data",
        "Fine-tune a sequence classifier (default: the offline all-MiniLM-L6-v2 encoder) on "
        "a labelled CSV/JSONL file, hold out a stratified part for the model card's metrics, "
        "and write the next version to the registry (serving it if none serves yet). The "
        "recipe is chosen on the file itself: a validation split is taken from the training "
        "rows; each candidate learning rate trains with early stopping on its macro-F1, as "
        "far as --time-budget allows; the fewest epochs within one standard error of the best "
        "score are chosen and trained again on every row; a temperature fitted on the split "
        "calibrates the confidence. The card records the search, every candidate's scores "
        "and the calibration (ECE before and after).",
    )
    p.add_argument("--train", type=Path, required=True, help="labelled CSV or JSONL file")
    _labelled_args(p)
    p.add_argument(
        "--base-model", help="encoder or checkpoint directory (default: all-MiniLM-L6-v2)"
    )
    p.add_argument("--holdout", type=float, default=0.05, help="fraction held out (0.05)")
    p.add_argument(
        "--epochs",
        type=float,
        help="train exactly this many passes, no early stopping (default: early stopping, "
        "at least 3 passes allowed and more on small files, up to 12)",
    )
    p.add_argument(
        "--lr",
        type=float,
        help="peak learning rate, not searched (default: the best of 5e-4, 1e-3 and 2.5e-4 "
        "that the time budget allows; 2e-4 with --base-model)",
    )
    p.add_argument("--batch-size", type=int, help="training batch size (32)")
    p.add_argument(
        "--time-budget",
        type=_budget,
        help="seconds the whole recipe search may take (1200); a run the clock stops still "
        "ends annealed, and candidates that would not fit are skipped",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training (0)")
    p.add_argument("--limit", type=int, help="train on at most this many examples")
    p.add_argument(
        "--promote", action="store_true", help="serve the new version even if one serves"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    p = add(
        "eval",
        "accuracy, macro-F1, per-class precision/recall, ECE and worst misses, as JSON",
        "Score a labelled file with a version as the worker serves it: its ONNX export on "
        "a CPU, else the fused PyTorch pass (MOODWIRE_RUNTIME=torch forces PyTorch), and "
        "print accuracy, macro-F1, the confusion matrix, each class's precision, recall "
        "and F1, the expected calibration error (ECE, 15 bins: how far the confidence is "
        "from the accuracy), the most confidently wrong examples and the engine that scored.",
    )
    p.add_argument("--data", type=Path, required=True, help="labelled CSV or JSONL file")
    _labelled_args(p)
    p.add_argument("--version", help="model version (default: the serving one)")
    p.add_argument(
        "--wrong",
        type=_non_negative_int,
        default=10,
        help="how many of the most confidently wrong examples to list (10; 0: none)",
    )

    p = add(
        "explain",
        "why a text gets its label: each word's weight (integrated gradients)",
        "Score TEXT with a version (default: the serving one) and attribute the label's "
        "probability to each word with integrated gradients (captum), from a baseline of pad "
        "tokens to the text: a word's weight is its share of the move, + towards the label, "
        "- away from it. Prints the label, its probability and the words by weight; --json "
        "prints one JSON object with every word (text order), its character span and weight, "
        "and IG's convergence delta. Loads the model: seconds, not for a scoring loop.",
    )
    p.add_argument("text", metavar="TEXT", help="the text to explain (quote it)")
    p.add_argument("--version", help="model version (default: the serving one)")
    p.add_argument(
        "--label",
        help="explain this label (negative, neutral or positive) instead of the predicted one",
    )
    p.add_argument(
        "--steps", type=int, default=50, help="integration steps (50; more: a smaller delta)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")

    add("stats", "counts from the store, as JSON")

    p = add(
        "alerts",
        "list alerts (newest first): surges, spikes, shifts and drift, with their evidence",
        "List the alerts in the store, newest window first. Each names its kind "
        "(negative_surge, sentiment_shift, volume_spike, drift), the entity or topic, the "
        "statistic against its baseline, the items behind it and similar past episodes. "
        "With --json, one JSON array of the full alerts.",
    )
    p.add_argument(
        "--since", help="only alerts whose window ends after this: ISO time, or 30m, 24h, 7d"
    )
    p.add_argument("--entity", help="only this entity (ticker, e.g. ACME or $ACME)")
    p.add_argument(
        "--kind",
        choices=["negative_surge", "sentiment_shift", "volume_spike", "drift"],
        help="only alerts of this kind",
    )
    p.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    p.add_argument("--json", action="store_true", help="one JSON array of the full alerts")

    p = add(
        "backtest",
        "replay a file with timestamps through the alert rules, print the alerts as JSON",
        "Score every row of a CSV/JSONL file with the serving model, tag entities and "
        "topics, and replay the rows in their own time order through the alert rules "
        "(MOODWIRE_ALERTS__*), exactly as the workers judge live windows. Prints one JSON "
        "object: counts per day and kind, and every alert with its evidence.",
    )
    p.add_argument("file", type=Path, help="CSV or JSONL file of items with timestamps")
    p.add_argument("--text-col", help="column holding the text (default: auto-detect)")
    p.add_argument(
        "--window", type=int, help="window length in seconds (MOODWIRE_ALERTS__WINDOW_S)"
    )
    p.add_argument(
        "--shuffle-times",
        type=int,
        metavar="SEED",
        help="deal the timestamps out at random first (a stream with no real episodes)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    p = add("models", "list the registry's versions, as JSON")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also prove every version as a load does (checksums of its files, then a smoke "
        "batch that must give finite probabilities): each gets verified and problem; exits 1 "
        "naming each refused version on stderr",
    )
    p = add(
        "promote",
        "serve a version (operator action)",
        "Verify the version's checksums, write the promotion to the audit log and switch the "
        "serving pointer in one step (if the audit row cannot be written, nothing changes). "
        "Needs a user with the operator role.",
    )
    p.add_argument("version", help="the version to serve, e.g. v3 (see `moodwire models`)")
    _operator_args(p)
    p = add(
        "rollback",
        "serve the previously serving version (operator action)",
        "Like promote, for the version that served before the current one. Needs a user "
        "with the operator role.",
    )
    _operator_args(p)

    # -- the store's schema and the audit log (issue 15: state-migrations) --------------
    p = add("store", "the store's schema: its migration, and upgrading it")
    store = p.add_subparsers(dest="store", metavar="ACTION", required=True)
    s = store.add_parser(
        "current",
        help="the store's schema revision and the newest one, as JSON (changes nothing)",
        description="Print the store's schema revision (null: empty, or written before "
        "migrations) and the newest this release knows. Exits 1 when the store is behind.",
    )
    _common(s)
    s = store.add_parser(
        "upgrade",
        help="migrate the store to the newest schema revision now",
        description="Run the store's migrations under a lock (every process also does this "
        "when it opens the store). A store written before migrations is adopted in place, "
        "nothing lost. Prints the revisions before and after, as JSON.",
    )
    _common(s)

    p = add("audit", "the audit log: list it, or verify its hash chain")
    audit = p.add_subparsers(dest="audit", metavar="ACTION", required=True)
    s = audit.add_parser(
        "verify",
        help="check the audit log's hash chain: exit 0 if intact, 1 naming the first broken entry",
        description="Recompute every audit row's hash and its link to the row before, from "
        "the first. Intact: prints the count and the head (SEQ:HASH; note it, and pass it "
        "as --expect later to also catch rows cut off the end). Broken: exits 1 naming the "
        "first broken entry's seq and whether it was changed or a row before it is missing.",
    )
    _common(s)
    s.add_argument(
        "--expect",
        metavar="SEQ:HASH",
        help="a head printed by an earlier verify: it must still be in the log, unchanged",
    )
    s.add_argument("--json", action="store_true", help="one JSON object instead of a line")
    s = audit.add_parser("list", help="the audit log's newest rows, oldest first")
    _common(s)
    s.add_argument("--action", help="only this action (promote, rollback, acknowledge, …)")
    s.add_argument("--limit", type=int, default=50, help="at most this many rows (50)")
    s.add_argument("--json", action="store_true", help="one JSON array of the rows")
    usercommands.add_parsers(sub, _common)

    p = add("bench", "benchmarks, printed as JSON")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    t = bench.add_parser("throughput", help="items/s and latency through a real broker and worker")
    _common(t)
    t.add_argument("--items", type=int, default=2000, help="items through the path (2000)")
    t.add_argument("--batch-size", type=int, help="worker batch size (64)")
    t.add_argument(
        "--latency-items",
        type=int,
        default=600,
        help="items for the latency run at half the measured rate (600)",
    )
    t.add_argument(
        "--data", type=Path, help="texts to use (default: shared data if present, else generated)"
    )
    t.add_argument(
        "--no-peer",
        dest="peer",
        action="store_false",
        help="skip the peer (a plain kafka-python consumer, transformers pipeline and "
        "sentence-transformers encoder on the same topic)",
    )
    t.add_argument(
        "--sweep-batches",
        type=_batch_sizes,
        default=(),
        metavar="N,N,…",
        help="also the bare forward rate at these batch sizes (e.g. 64,256,1024,4096 on a GPU)",
    )
    t.add_argument(
        "--while-training",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="also score for SECONDS alone and SECONDS while a learner process fine-tunes on "
        "the same device: scoring_while_training_ratio (off: 0)",
    )
    t.add_argument("--out", type=Path, help="also write the JSON here")

    c = bench.add_parser(
        "continual",
        help="frozen / naive / moodwire / joint over labelled phases: accuracy matrix, forgetting, drift",
        description="Bootstrap on phase A's stream part (80%), stream every phase's stream part "
        "in order with delayed labels through the learner, and evaluate each strategy on every "
        "phase's held-out 20% after each phase. Writes FILE.json and FILE.png.",
    )
    _common(c)
    c.add_argument(
        "--phases",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="labelled CSV/JSONL files, one per phase, in stream order",
    )
    c.add_argument(
        "--out", type=Path, required=True, help="JSON result (a PNG is written beside it)"
    )
    c.add_argument(
        "--label-map", help="e.g. 0=negative,1=positive,2=neutral (named labels map themselves)"
    )
    c.add_argument(
        "--label-delay", type=int, default=50, help="items between an item and its label (50)"
    )
    c.add_argument(
        "--label-fraction", type=float, default=1.0, help="share of items that get a label (1.0)"
    )
    c.add_argument(
        "--strategies", nargs="+", default=None, help="subset of frozen naive moodwire joint"
    )
    c.add_argument(
        "--null-items",
        type=int,
        default=5000,
        help="items of the no-shift stream (phase A shuffled) checked for false alarms (5000)",
    )
    c.add_argument(
        "--bootstrap-epochs",
        type=float,
        help="passes of the bootstrap, fixed (default: the recipe `bootstrap` chooses, with "
        "early stopping and the lr search)",
    )
    c.add_argument(
        "--reserve",
        type=float,
        default=0.2,
        help="share of phase A's stream part the bootstrap does not train on: the learner's "
        "held-out memory of A, on which its gate measures forgetting (0.2)",
    )
    c.add_argument(
        "--keep-order",
        action="store_true",
        help="stream each phase in file order (default: shuffled, seeded: a steady state)",
    )
    c.add_argument(
        "--retrain-every", type=int, help="new labels that trigger a retrain on their own"
    )
    c.add_argument(
        "--min-new-labels", type=int, help="fresh labels a drift-triggered retrain needs"
    )
    c.add_argument("--time-budget", type=float, help="seconds per incremental fine-tune")
    c.add_argument("--seed", type=int, default=0, help="seed of the split, stream and training (0)")

    d = bench.add_parser(
        "dashboard",
        help="first meaningful paint of the dashboard in headless Chromium over a large store",
        description="Fill a fresh SQLite store with N generated items (or use --store as it is "
        "when it holds items), serve the dashboard on it, and time in headless Chromium "
        "(Debian's /usr/bin/chromium) the first drawn chart of the overview, cold and warm, "
        "and the switch to each other page.",
    )
    _common(d)
    d.add_argument(
        "--items", type=int, default=100_000, help="items to fill an empty store with (100000)"
    )
    d.add_argument(
        "--warm-loads", type=int, default=5, help="warm reloads to take the median of (5)"
    )
    d.add_argument("--port", type=int, help="dashboard port (default: a free one)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar while filling")
    d.add_argument("--out", type=Path, help="also write the JSON here")

    r = bench.add_parser(
        "retrieval",
        help="recall@10, build time, memory and query latency of the FAISS index kinds at scale",
        description="Build each index kind the worker chooses between (flat: exact; ivf and "
        "hnsw: approximate, with the parameters retrieval/index.py picks for the size) at each "
        "size, and measure recall@10 against brute force on held-out queries, build seconds, "
        "index bytes, ms per search call of 64 queries and single-query p50/p99, plus a sweep "
        "of nprobe (ivf) and efSearch (hnsw). Vectors: 384-d, normalised, inner product; the "
        "shared data set's texts embedded by the frozen encoder when present (else a generated "
        "clustered set), grown to each size by mixtures of near real vectors. Writes FILE.json "
        "and FILE.png; 1M items need about 6 GB of memory and, on 2 cores, some 20 minutes.",
    )
    _common(r)
    r.add_argument(
        "--sizes",
        default="100k,1M",
        help="comma-separated index sizes, k and M allowed (100k,1M)",
    )
    r.add_argument(
        "--kinds",
        default="flat,ivf,hnsw",
        help="comma-separated index kinds: flat, ivf, hnsw (all)",
    )
    r.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: sizes 2k,20k, 200 queries, 50 single ones (given flags still win)",
    )
    r.add_argument("--queries", type=int, help="held-out queries for recall and batches (1000)")
    r.add_argument(
        "--single-queries", type=int, help="queries timed one per call for p50/p99 (200)"
    )
    r.add_argument(
        "--data",
        type=Path,
        help="directory of labelled CSV/JSONL files to embed (default: shared/data if present)",
    )
    r.add_argument(
        "--generated",
        action="store_true",
        help="use the generated clustered vectors even where the shared data is present",
    )
    r.add_argument("--threads", type=int, help="FAISS threads (default: every core)")
    r.add_argument("--seed", type=int, default=0, help="seed of the split and growth (0)")
    r.add_argument(
        "--out",
        type=Path,
        help="JSON result, a PNG beside it (default: DATA_DIR/bench/retrieval.json)",
    )

    f = bench.add_parser(
        "faults",
        help="fuzz every input, SIGKILL worker and learner, restart the broker, cut the "
        "database, tamper with versions: crashes, lost, duplicated, recovery",
        description="Break the real parts on purpose and count what it cost. Parts: fuzz (cases "
        "per input target: file loaders, the message validator into SQLite and PostgreSQL, label "
        "and control messages), worker_kills (SIGKILL `moodwire worker` at random moments, "
        "restart, count lost and duplicated items in the store and on news.scored), "
        "learner_kills (SIGKILL `moodwire learner` during training and promotion, check the "
        "registry, the audit log and the labels), broker_restart (the broker killed and "
        "restarted empty), db_outage (PostgreSQL cut off mid-stream), tampered (five kinds of "
        "tampered version, at worker start and at a hot swap). Prints a table on stderr and one "
        "JSON object on stdout; exit 0 only when there are no crashes, losses, duplicates or "
        "violations. Uses the configured registry when it serves a version, else bootstraps a "
        "small model under DATA_DIR/bench-faults/. The short default sizes suit CI; --full "
        "runs 10,000 fuzz cases per target and 130 kill trials.",
    )
    # Not _common: the bench starts its own brokers and stores, so those flags do not apply.
    g = f.add_argument_group("model and data (override MOODWIRE_* environment)")
    g.add_argument(
        "--registry",
        type=Path,
        default=SUPPRESS,
        help="model registry to use when it serves a proven version",
    )
    g.add_argument(
        "--data-dir",
        type=Path,
        default=SUPPRESS,
        help="where the bench keeps its model and its work (DATA_DIR/bench-faults/)",
    )
    g.add_argument(
        "--device",
        default=SUPPRESS,
        help="device of the workers and learners: auto, cpu, cuda, cuda:N",
    )
    g.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=SUPPRESS,
        help="log level (info)",
    )
    f.add_argument(
        "--full",
        action="store_true",
        help="full sizes: 10000 fuzz cases per target, 100 worker kills, 30 learner kills, "
        "3 broker restarts, a 30 s database outage (given sizes still win)",
    )
    f.add_argument(
        "--only",
        nargs="+",
        metavar="PART",
        choices=[
            "fuzz",
            "worker_kills",
            "learner_kills",
            "broker_restart",
            "db_outage",
            "tampered",
        ],
        help="run only these parts: fuzz worker_kills learner_kills broker_restart db_outage "
        "tampered (default: all)",
    )
    f.add_argument("--seed", type=int, default=0, help="seed of fuzz cases and kill moments (0)")
    f.add_argument(
        "--fuzz-cases", type=int, metavar="N", help="fuzz cases per target (500; full 10000)"
    )
    f.add_argument(
        "--kills",
        type=int,
        metavar="N",
        help="worker SIGKILLs in all, at most 10 per run of --items items (4; full 100)",
    )
    f.add_argument(
        "--items",
        type=int,
        metavar="N",
        help="items per worker-kill run and in the database outage (600)",
    )
    f.add_argument(
        "--learner-kills",
        type=int,
        metavar="N",
        help="learner SIGKILLs during retrains (2; full 30)",
    )
    f.add_argument(
        "--broker-restarts",
        type=int,
        metavar="N",
        help="times the broker is killed and restarted empty under a worker (1; full 3)",
    )
    f.add_argument(
        "--outage-s",
        type=float,
        metavar="S",
        help="seconds PostgreSQL stays cut off under a worker (10; full 30)",
    )
    f.add_argument(
        "--postgresql",
        metavar="URL",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server where the bench may create and drop its own databases "
        "(default: the local development server); unreachable, it runs on SQLite only and "
        "skips the database outage",
    )
    f.add_argument("--no-postgresql", action="store_true", help="SQLite only, no database outage")
    f.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the run's logs and stores under DATA_DIR/bench-faults/ (kept anyway when "
        "it fails)",
    )
    f.add_argument("--out", type=Path, help="also write the JSON here")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    base = Settings()
    return base.with_overrides(
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        store_url=getattr(args, "store_url", None),
        registry=getattr(args, "registry", None),
        data_dir=getattr(args, "data_dir", None),
        device=getattr(args, "device", None),
        log_level=getattr(args, "log_level", None),
        consumer_group=getattr(args, "group", None),
        batch_size=getattr(args, "batch_size", None),
        partitions=getattr(args, "partitions", None),
    )


def settings_errors(exc: ValidationError) -> str:
    """One line per problem, naming the setting; never the value (it may be a secret)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = "__".join(str(p) for p in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  MOODWIRE_{where}: {message}" if where else f"  {message}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"moodwire: invalid settings:\n{settings_errors(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # Library switches, set once at the entry point: the tokenizer's own thread pool
    # fights torch's for the same cores (measured: p99 batch time 1.2 s -> 0.3 s on 2
    # cores), and no model may ever be fetched from a hub.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Imported here: each command pulls in only what it needs (torch is slow to import).
    from moodwire import commands  # noqa: F401  (registers the commands)

    # What is loaded so far lives until exit: the collector need not walk it again, on
    # every full collection and once more at exit (a tenth of a second of `moodwire stats`).
    gc.freeze()

    # A command with actions of its own (bench, store, audit) keeps the action under its name.
    action = getattr(args, args.command, None)
    key = f"{args.command} {action}" if isinstance(action, str) else args.command
    try:
        return COMMANDS[key](args, settings)
    except KeyboardInterrupt:
        return 130
    except UserError as exc:
        print(f"moodwire {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
