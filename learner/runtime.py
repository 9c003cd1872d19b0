"""Serving runtimes: sentiment probabilities and frozen-space vectors in one encoder pass.

The served classifier is fine-tuned with its embeddings and lower
:data:`~retrieval.encoding.SHARED_LAYERS` layers left exactly as the base
encoder's (``TrainConfig.frozen_layers``), so the scorer tokenises once, runs
that shared trunk once, and branches: the base encoder's upper layers give the
frozen embedding (the retrieval and drift space, which never moves), the
classifier's fine-tuned upper layers give the sentiment.

Three engines, chosen by :func:`engine_for`:

* :class:`OnnxEngine`: the fused graph exported to ONNX when the version is
  written (:func:`save_version`), the classifier's own layers quantised to int8,
  the shared trunk and the embedder's layers left float32 (the frozen space
  stays exact); ONNX Runtime on the CPU. The
  export's files are in the version's card like its weights and verified with
  them; on load its outputs must agree with the PyTorch model on fixed texts.
* :class:`TorchEngine`: the same fused pass in PyTorch (bf16 autocast on CUDA).
* :class:`TwoPassEngine`: a classifier that does not share the trunk (a version
  trained with every layer free, another architecture): two passes, as before.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
import torch

from learner.classifier import BertMeanPoolForSequenceClassification, SentimentClassifier
from learner.errors import ModelLoadError
from retrieval.embedder import FrozenEmbedder
from retrieval.encoding import SHARED_LAYERS, autocast, encoded_batches, encoder_layers

log = structlog.get_logger(__name__)

RUNTIMES = ("auto", "onnx", "torch")
EXPORT_FILE = "serving.onnx"
EXPORT_CARD = "serving.json"
# The exported graph must agree with the PyTorch model it came from: int8 weights move
# probabilities by ~0.01 on ordinary texts, a wrong or stale export by far more.
AGREEMENT_TOLERANCE = 0.1
_CHECK_TEXTS = (
    "ACME shares jump after record quarterly profit",
    "Globex misses estimates and cuts its full-year outlook",
    "Initech to report second-quarter results on Monday",
    "$HOOLI",
)


class Engine(Protocol):
    """What the scorer runs per batch: ``score(texts) -> (probs, vectors)``."""

    kind: str

    def score(self, texts: list[str], micro_batch: int) -> tuple[np.ndarray, np.ndarray]: ...


def _extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class FusedModule(torch.nn.Module):
    """Shared trunk, then the frozen embedder's and the classifier's upper layers.

    Outputs ``(probs, vectors)``: probabilities in ``LABELS`` order and L2-normalised
    mean-pooled embeddings of the base encoder — what the two passes would give.
    With ``with_vectors=False`` only the classifier branch (the bench's baseline).
    """

    def __init__(
        self,
        classifier: SentimentClassifier,
        embedder: FrozenEmbedder,
        shared_layers: int,
        *,
        with_vectors: bool = True,
    ) -> None:
        super().__init__()
        model = classifier.model
        base = embedder.model
        self.embeddings = base.embeddings
        base_layers = encoder_layers(base)
        self.trunk = torch.nn.ModuleList(base_layers[:shared_layers])
        self.embedder_top = torch.nn.ModuleList(base_layers[shared_layers:] if with_vectors else [])
        self.classifier_top = torch.nn.ModuleList(encoder_layers(model)[shared_layers:])
        self.head = model.classifier
        self.with_vectors = with_vectors
        self.register_buffer("columns", torch.tensor(classifier._columns), persistent=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        extended = _extended_mask(attention_mask, hidden.dtype)
        for layer in self.trunk:
            hidden = layer(hidden, attention_mask=extended)
        branch = hidden
        for layer in self.classifier_top:
            branch = layer(branch, attention_mask=extended)
        logits = self.head(_mean_pool(branch, attention_mask))
        probs = torch.softmax(logits.float(), dim=-1)[:, self.columns]
        if not self.with_vectors:
            return probs, probs[:, :0]
        vectors = hidden
        for layer in self.embedder_top:
            vectors = layer(vectors, attention_mask=extended)
        pooled = _mean_pool(vectors, attention_mask).float()
        return probs, torch.nn.functional.normalize(pooled, dim=-1)


def shares_trunk(
    classifier: SentimentClassifier, embedder: FrozenEmbedder, shared_layers: int = SHARED_LAYERS
) -> str | None:
    """``None`` when the classifier can run fused with ``embedder``; else why not."""
    if not isinstance(classifier.model, BertMeanPoolForSequenceClassification):
        return f"{type(classifier.model).__name__} is not the mean-pool BERT classifier"
    try:
        ours, theirs = encoder_layers(classifier.model), encoder_layers(embedder.model)
    except ValueError as exc:
        return str(exc)
    if len(ours) != len(theirs) or not 0 < shared_layers < len(ours):
        return f"{len(ours)} layers against the embedder's {len(theirs)}"
    if classifier.tokenizer.get_vocab() != embedder.tokenizer.get_vocab():
        return "its tokenizer is not the embedder's"
    pairs = [(classifier.model.base_model.embeddings, embedder.model.embeddings)]
    pairs += list(zip(ours[:shared_layers], theirs[:shared_layers], strict=True))
    for mine, base in pairs:
        a, b = mine.state_dict(), base.state_dict()
        if a.keys() != b.keys() or any(not torch.equal(a[k].cpu(), b[k].cpu()) for k in a):
            return f"its embeddings and lower {shared_layers} layers were fine-tuned"
    return None


def _batches(tokenizer: Any, texts: Sequence[str], micro_batch: int, max_length: int) -> Any:
    return encoded_batches(tokenizer, texts, micro_batch, max_length, torch.device("cpu"))


@dataclass
class TorchEngine:
    """The fused pass in PyTorch: one tokenisation, one trunk, two branches."""

    module: FusedModule
    tokenizer: Any
    device: torch.device
    max_length: int
    dim: int
    kind: str = "torch-fused"

    @torch.inference_mode()
    def score(self, texts: list[str], micro_batch: int) -> tuple[np.ndarray, np.ndarray]:
        probs = np.zeros((len(texts), 3), dtype=np.float32)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        pin = self.device.type == "cuda"
        for idx, enc in _batches(self.tokenizer, texts, micro_batch, self.max_length):
            ids, mask = enc["input_ids"], enc["attention_mask"]
            if pin:  # page-locked host memory: the copy overlaps the previous batch's work
                ids, mask = ids.pin_memory(), mask.pin_memory()
            ids = ids.to(self.device, non_blocking=True)
            mask = mask.to(self.device, non_blocking=True)
            with autocast(self.device):
                p, v = self.module(ids, mask)
            probs[idx] = p.float().cpu().numpy()
            if self.dim:
                vectors[idx] = v.float().cpu().numpy()
        return probs, vectors


class OnnxEngine:
    """The fused graph on ONNX Runtime (CPU)."""

    kind = "onnx"

    def __init__(self, path: Path, tokenizer: Any, max_length: int, *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(self.session.get_outputs()[1].shape[-1] or 0)
        self.path = path

    def score(self, texts: list[str], micro_batch: int) -> tuple[np.ndarray, np.ndarray]:
        probs = np.zeros((len(texts), 3), dtype=np.float32)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx, enc in _batches(self.tokenizer, texts, micro_batch, self.max_length):
            p, v = self.session.run(
                None,
                {
                    "input_ids": enc["input_ids"].numpy(),
                    "attention_mask": enc["attention_mask"].numpy(),
                },
            )
            probs[idx] = p
            if self.dim:
                vectors[idx] = v
        return probs, vectors


@dataclass
class TwoPassEngine:
    """A classifier that shares nothing with the embedder: one pass each."""

    classifier: SentimentClassifier
    embedder: FrozenEmbedder
    kind: str = "two-pass"

    def score(self, texts: list[str], micro_batch: int) -> tuple[np.ndarray, np.ndarray]:
        probs = self.classifier.predict_proba(texts, batch_size=micro_batch)
        return probs, self.embedder.embed(texts, batch_size=micro_batch)


def export_onnx(
    classifier: SentimentClassifier,
    embedder: FrozenEmbedder,
    path: Path,
    *,
    shared_layers: int = SHARED_LAYERS,
    with_vectors: bool = True,
) -> Path:
    """Write the fused graph as ONNX at ``path``, the classifier's own layers in int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().addFilter(_quiet_quantizer)
    module = FusedModule(classifier, embedder, shared_layers, with_vectors=with_vectors)
    module = copy.deepcopy(module).to("cpu").float().eval()
    sample = classifier.tokenizer(list(_CHECK_TEXTS), padding=True, return_tensors="pt")
    # The float graph is scratch work, not part of the version: it goes to the system's
    # temporary directory. Written beside the version on a full disk, the exporter left
    # it truncated without an error, and the quantiser's parse error then hid the full
    # disk (an outage the learner waits out) behind a "corrupt" model.
    scratch = tempfile.TemporaryDirectory(prefix="moodwire-export-")
    fp32 = Path(scratch.name) / "fused.fp32.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter's notices (the TorchScript exporter is "legacy"; a traced Python
        # bool) are about its own future, not this graph: the agreement check proves it.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (sample["input_ids"], sample["attention_mask"]),
            str(fp32),
            input_names=["input_ids", "attention_mask"],
            output_names=["probs", "vectors"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "probs": {0: "batch"},
                "vectors": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    try:
        # Only the classifier's own matrix products, one scale per output channel. The
        # shared trunk and the embedder's layers stay float32, so the vectors are the
        # frozen space itself: quantised too, they kept cosine 0.99 of it but only 0.85
        # of their ten nearest neighbours (an index mixes them with float32 vectors).
        quantize_dynamic(
            str(fp32),
            str(path),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=_classifier_products(fp32),
            per_channel=True,
        )
    finally:
        scratch.cleanup()
    return path


def _classifier_products(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and node.name.startswith(("/classifier_top", "/head"))
    ]


def _quiet_quantizer(record: logging.LogRecord) -> bool:
    # ONNX Runtime's quantiser advises "pre-processing" on every call (root logger); its
    # shape inference is for static quantisation, and this one is dynamic.
    return not str(record.msg).startswith("Please consider to run pre-processing")


def save_version(
    classifier: SentimentClassifier,
    card: dict[str, Any],
    *,
    embedder: FrozenEmbedder | None = None,
    export: bool = True,
) -> Callable[[Path], None]:
    """The ``save`` for ``Registry.write_version``: weights, and the serving export.

    The export is made only for a classifier that shares the trunk with the frozen
    embedder; ``card["runtime"]`` records what was written (the registry adds the
    sha256 of every file, the export's included, after ``save`` returns).
    """

    def save(directory: Path) -> None:
        classifier.save(directory)
        if not export:
            card["runtime"] = {"kind": "torch", "reason": "export switched off"}
            return
        emb = embedder or FrozenEmbedder(device="cpu", max_length=classifier.max_length)
        why = shares_trunk(classifier, emb)
        if why is not None:
            card["runtime"] = {"kind": "two-pass", "reason": why}
            return
        t0 = time.perf_counter()
        export_onnx(classifier, emb, directory / EXPORT_FILE)
        entry = {
            "kind": "onnx",
            "file": EXPORT_FILE,
            "int8": "the classifier's own layers (the shared trunk and the embedder's: float32)",
            "shared_layers": SHARED_LAYERS,
            "space_id": emb.space_id,
            "opset": 17,
            "onnxruntime": _ort_version(),
        }
        (directory / EXPORT_CARD).write_text(json.dumps(entry, indent=2))
        card["runtime"] = {**entry, "export_s": round(time.perf_counter() - t0, 1)}

    return save


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _agreement(engine: Engine, classifier: SentimentClassifier, embedder: FrozenEmbedder) -> float:
    texts = list(_CHECK_TEXTS)
    probs, vectors = engine.score(texts, len(texts))
    if not (np.isfinite(probs).all() and np.isfinite(vectors).all()):
        return float("inf")
    gap = float(np.abs(probs - classifier.predict_proba(texts)).max())
    if vectors.shape[1]:
        cosine = (vectors * embedder.embed(texts)).sum(axis=1)
        gap = max(gap, float(np.abs(1.0 - cosine).max()))
    return gap


def engine_for(
    classifier: SentimentClassifier,
    embedder: FrozenEmbedder,
    *,
    version: str = "",
    runtime: str = "auto",
    threads: int = 0,
) -> Engine:
    """The fastest engine this classifier and device allow (see the module's docstring).

    ``runtime``: ``auto`` (ONNX on the CPU where the version has an export, else
    the fused PyTorch pass, else two passes), ``onnx`` (the same, saying so when
    there is no export), ``torch`` (never ONNX). A version's export that does not
    agree with its weights is refused (:class:`ModelLoadError`).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    why = shares_trunk(classifier, embedder)
    if why is not None:
        log.info("scoring_two_passes", version=version, reason=why)
        return TwoPassEngine(classifier, embedder)
    source = classifier.source_dir
    export = _export_of(source, embedder) if source is not None else None
    if runtime != "torch" and classifier.device.type == "cpu" and export is not None:
        engine: Engine = OnnxEngine(
            export, classifier.tokenizer, classifier.max_length, threads=threads
        )
        gap = _agreement(engine, classifier, embedder)
        if not gap <= AGREEMENT_TOLERANCE:
            raise ModelLoadError(
                f"version {version} refused: its ONNX export disagrees with its weights "
                f"(by {gap:.3g} on fixed texts)"
            )
        return engine
    if runtime == "onnx" and classifier.device.type == "cpu":
        log.warning("onnx_export_missing", version=version, source=str(source))
    module = FusedModule(classifier, embedder, SHARED_LAYERS).to(classifier.device).eval()
    return TorchEngine(
        module, classifier.tokenizer, classifier.device, classifier.max_length, embedder.dim
    )


def _export_of(directory: Path, embedder: FrozenEmbedder) -> Path | None:
    card_path = directory / EXPORT_CARD
    if not card_path.is_file():
        return None
    try:
        entry = json.loads(card_path.read_text())
        path = directory / str(entry["file"])
        same_space = entry.get("space_id") == embedder.space_id
        same_trunk = int(entry.get("shared_layers", -1)) == SHARED_LAYERS
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{card_path} is unreadable: {exc}") from exc
    if not (same_space and same_trunk and path.is_file()):
        log.warning(
            "onnx_export_unusable",
            source=str(directory),
            same_space=same_space,
            same_trunk=same_trunk,
        )
        return None
    return path


def classifier_only(
    engine: Engine, classifier: SentimentClassifier, embedder: FrozenEmbedder, workdir: Path
) -> Engine:
    """The classifier alone, in the same runtime as ``engine``: the baseline a path's cost
    is counted in (``bench throughput``'s ``path_cost_in_classifier_forwards``)."""
    if isinstance(engine, OnnxEngine):
        path = export_onnx(
            classifier, embedder, workdir / "classifier-only.onnx", with_vectors=False
        )
        return OnnxEngine(path, classifier.tokenizer, classifier.max_length)
    if isinstance(engine, TorchEngine):
        module = FusedModule(classifier, embedder, SHARED_LAYERS, with_vectors=False)
        return TorchEngine(
            module.to(classifier.device).eval(),
            classifier.tokenizer,
            classifier.device,
            classifier.max_length,
            0,
        )
    return _ClassifierAlone(classifier)


@dataclass
class _ClassifierAlone:
    classifier: SentimentClassifier
    kind: str = "torch-classifier"

    def score(self, texts: list[str], micro_batch: int) -> tuple[np.ndarray, np.ndarray]:
        probs = self.classifier.predict_proba(texts, batch_size=micro_batch)
        return probs, np.zeros((len(texts), 0), dtype=np.float32)
