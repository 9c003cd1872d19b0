"""Sentence embeddings in a frozen space.

The space is the *base* encoder's, mean-pooled and L2-normalised, and never the
fine-tuned classifier's: fine-tuning moves the classifier, not this space, so
the index and the drift reference stay valid across model versions. The
space id names the exact weights, and an index built in another space is
refused rather than silently mixed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from retrieval.encoding import autocast, default_encoder_path, encoded_batches, quiet_transformers


def _space_id(path: Path) -> str:
    weights = path / "model.safetensors"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        # Size plus the first and last MiB identify the weights without hashing 90 MB.
        digest.update(str(weights.stat().st_size).encode())
        digest.update(f.read(1 << 20))
        f.seek(max(0, weights.stat().st_size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return f"{path.name}:{digest.hexdigest()[:16]}"


class FrozenEmbedder:
    """Mean-pooled, normalised embeddings of a frozen encoder.

    >>> emb = FrozenEmbedder(device="cpu")
    >>> emb.embed(["ACME beats estimates"]).shape
    (1, 384)
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        device: torch.device | str = "cpu",
        max_length: int = 128,
    ) -> None:
        self.path = Path(path) if path is not None else default_encoder_path()
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        with quiet_transformers():
            model = AutoModel.from_pretrained(self.path, use_safetensors=True)
        self.model = model.to(self.device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.space_id = _space_id(self.path)

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx, enc in encoded_batches(
            self.tokenizer, texts, batch_size, self.max_length, self.device
        ):
            with autocast(self.device):
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[idx] = pooled.cpu().numpy()
        return out
