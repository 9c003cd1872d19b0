"""The sentiment classifier: a Hugging Face encoder with a three-way head.

Weights are read and written with safetensors only; a directory holding only
pickled weights (``pytorch_model.bin``) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from learner.data import LABELS
from learner.errors import ModelLoadError
from retrieval.encoding import (  # noqa: F401 - re-exported: callers import them from here
    autocast,
    default_encoder_path,
    encoded_batches,
    quiet_transformers,
    select_device,
)

_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class BertMeanPoolForSequenceClassification(BertPreTrainedModel):
    """BERT encoder, masked mean of the token states, dropout, linear head.

    Sentence-transformers encoders (all-MiniLM-L6-v2 among them) were trained
    to be read through a mean pool, not the [CLS] pooler, so a head on the mean
    starts from a useful sentence representation. An ordinary class in this
    module: it loads with ``from_pretrained`` and safetensors, no remote code.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        hidden = self.bert(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


POOLINGS = ("auto", "mean", "cls")


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    if not any((path / name).is_file() for name in _SAFE_WEIGHTS):
        pickled = [name for name in _PICKLE_WEIGHTS if (path / name).is_file()]
        if pickled:
            raise ModelLoadError(
                f"{path} holds only pickled weights ({', '.join(pickled)}); Moodwire loads "
                "safetensors only. Convert it once in a trusted environment "
                "(load it and save_pretrained(..., safe_serialization=True))."
            )
        raise ModelLoadError(f"{path} has no model.safetensors weights")


def _columns_for(model: PreTrainedModel, path: Path) -> list[int]:
    """Model output index of each label in LABELS order."""
    id2label = {int(i): str(name).strip().lower() for i, name in model.config.id2label.items()}
    by_name = {name: i for i, name in id2label.items()}
    missing = [label for label in LABELS if label not in by_name]
    if missing or len(id2label) != len(LABELS):
        raise ModelLoadError(
            f"{path} is not a {len(LABELS)}-way sentiment classifier with labels {list(LABELS)} "
            f"(its id2label is {model.config.id2label}); start from it with "
            "SentimentClassifier.from_encoder instead"
        )
    return [by_name[label] for label in LABELS]


class SentimentClassifier:
    """Sentiment probabilities for texts, columns in ``LABELS`` order.

    Build one from a saved classifier (``from_pretrained``) or from any
    encoder with a fresh head (``from_encoder``); ``.model`` and
    ``.tokenizer`` are the Hugging Face objects, for the trainer.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: torch.device,
        max_length: int = 128,
        columns: Sequence[int] = (0, 1, 2),
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.model = model.to(device)
        self.model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        self.labels: tuple[str, ...] = LABELS
        self._columns = list(columns)
        # The directory it was loaded from (a registry version's), where a serving
        # export may sit beside the weights (learner.runtime); None for a fresh one.
        self.source_dir: Path | None = None

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str = "auto", max_length: int = 128
    ) -> SentimentClassifier:
        """Load a saved classifier directory (safetensors weights only)."""
        path = Path(path)
        _check_model_dir(path)
        architectures = AutoConfig.from_pretrained(path).architectures or []
        model_class = (
            BertMeanPoolForSequenceClassification
            if BertMeanPoolForSequenceClassification.__name__ in architectures
            else AutoModelForSequenceClassification
        )
        with quiet_transformers():
            model = model_class.from_pretrained(path, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
        classifier = cls(
            model,
            tokenizer,
            device=select_device(device),
            max_length=max_length,
            columns=_columns_for(model, path),
        )
        classifier.source_dir = path
        return classifier

    @classmethod
    def from_encoder(
        cls,
        path: str | Path | None = None,
        *,
        device: str = "auto",
        max_length: int = 128,
        seed: int = 0,
        pooling: str = "auto",
    ) -> SentimentClassifier:
        """Put a fresh, seeded three-way head on an encoder (default: all-MiniLM-L6-v2).

        ``pooling``: ``mean`` (masked mean of token states; BERT-family encoders
        only), ``cls`` (the checkpoint's own sequence-classification head
        architecture), or ``auto``: ``mean`` for a bare BERT encoder, ``cls``
        otherwise (other architectures, or a checkpoint that already is a
        classifier, e.g. a FinBERT).
        """
        path = Path(path) if path is not None else default_encoder_path()
        _check_model_dir(path)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        config = AutoConfig.from_pretrained(path)
        is_bert = config.model_type == "bert"
        is_classifier = any(
            a.endswith("ForSequenceClassification") for a in config.architectures or []
        )
        if pooling == "mean" and not is_bert:
            raise ValueError(
                f"pooling='mean' supports BERT-family encoders; {path} is "
                f"{config.model_type!r}: use pooling='cls'"
            )
        use_mean = pooling == "mean" or (pooling == "auto" and is_bert and not is_classifier)
        model_class = (
            BertMeanPoolForSequenceClassification
            if use_mean
            else AutoModelForSequenceClassification
        )
        torch.manual_seed(seed)
        with quiet_transformers():
            model = model_class.from_pretrained(
                path,
                use_safetensors=True,
                num_labels=len(LABELS),
                id2label=dict(enumerate(LABELS)),
                label2id={label: i for i, label in enumerate(LABELS)},
                # A checkpoint that already has a head of another size gets a new one.
                ignore_mismatched_sizes=True,
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, device=select_device(device), max_length=max_length)

    def label_ids(self, labels: Sequence[str]) -> list[int]:
        """Model output indices (training targets) for canonical label names."""
        try:
            return [self._columns[LABELS.index(label)] for label in labels]
        except ValueError as exc:
            raise ValueError(f"labels must be among {list(LABELS)}: {exc}") from exc

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Probabilities, shape ``(len(texts), 3)``, float32, columns in ``LABELS`` order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        self.model.eval()
        with torch.inference_mode():
            for idx, batch in encoded_batches(
                self.tokenizer, texts, batch_size, self.max_length, self.device
            ):
                with autocast(self.device):
                    logits = self.model(**batch).logits
                probs = torch.softmax(logits.float(), dim=-1)[:, self._columns]
                out[idx] = probs.cpu().numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        """The most probable label of each text."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        return [self.labels[i] for i in probs.argmax(axis=1)]

    def fold_temperature(self, temperature: float) -> None:
        """Divide the logits by ``temperature`` for good (``learner.calibration``).

        Scales the last linear layer that writes the logits (one output per label), so
        every engine that serves the weights gives the scaled probabilities.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if temperature == 1.0:
            return
        num_labels = self.model.config.num_labels
        layers = [
            m
            for m in self.model.modules()
            if isinstance(m, torch.nn.Linear) and m.out_features == num_labels
        ]
        if not layers:
            raise ValueError(
                f"{type(self.model).__name__} has no linear layer with {num_labels} outputs"
            )
        with torch.no_grad():
            layers[-1].weight.div_(temperature)
            if layers[-1].bias is not None:
                layers[-1].bias.div_(temperature)

    def save(self, path: str | Path) -> None:
        """Write weights (safetensors), config and tokenizer to ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.model.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)

    @property
    def num_parameters(self) -> int:
        """Number of parameters in the model (encoder and head)."""
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        return (
            f"SentimentClassifier(model={type(self.model).__name__}, device={self.device}, "
            f"max_length={self.max_length}, parameters={self.num_parameters:,})"
        )
