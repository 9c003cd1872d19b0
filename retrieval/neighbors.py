"""What a search of past items returns: one similar item, with its label if it has one."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Neighbor(BaseModel):
    """A similar past item, from the FAISS index."""

    model_config = ConfigDict(frozen=True)

    id: str
    similarity: float
    label: Literal["negative", "neutral", "positive"] | None
