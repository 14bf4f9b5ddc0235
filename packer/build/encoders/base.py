"""What every encoder (tokenizer backend) gives the tokenize stage: a batch of texts as flat token ids.

    encode(texts) -> (ids, lengths)     ids uint32 [T]: every text's ids concatenated; lengths int64 [N]

No special tokens are added (the stage adds BOS and EOS as ids). An encoder is built in each worker
process from the tokenizer's JSON (TokenizerInfo.json) and held for the worker's life.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids (uint32) and per-text lengths (int64) of `texts`, no special tokens added."""


@dataclass(frozen=True)
class Choice:
    """The backend a run uses and why (stated in the terminal summary and report.json, never a manifest)."""

    backend: str
    version: str
    reason: str
