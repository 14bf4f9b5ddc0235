"""What a pack's labels and positions are: the one definition of -100, label shifting and positions.

Pack with segments of lengths [3, 2] (tokens a b c | d e) and loss on b c e::

    input_ids     a    b    c    d    e
    position_ids  0    1    2    0    1          restart in every segment
    cu_seqlens    [0, 3, 5]                      segment boundaries
    labels (label_mode="unshifted", for models that shift internally, such as Hugging Face's):
                  -100 b    c    -100 e          the first token of a segment is never a target
    labels (label_mode="shifted", already aligned with the logits):
                  b    c    -100 e    -100       the last token of a segment predicts nothing

Either way no loss crosses a segment boundary. The runtime reader (packer.train.reader), the compiled
batch kernel (packer.train.collate, tested against these), the Hugging Face collator and the losses all
take IGNORE and the label modes from here.
"""

from __future__ import annotations

import numpy as np

from packer.core.errors import ConfigError
from packer.core.roles import PROMPT

IGNORE = -100
"""Label of a token that is not a target (PyTorch's cross_entropy ignore_index default)."""
LABEL_MODES = ("unshifted", "shifted")


def check_label_mode(label_mode: str) -> None:
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode '{label_mode}' is not one of {', '.join(LABEL_MODES)}")


def make_labels(ids: np.ndarray, mask: np.ndarray, cu: np.ndarray, label_mode: str) -> np.ndarray:
    """int64 labels for one or more concatenated segments (boundaries `cu`), -100 where no loss.

    `mask` holds 0/1 (uint8). The definition the loader's compiled kernel (packer.train.collate) is tested
    against; PackedShards items use it directly.
    """
    n = len(ids)
    on = mask.view(np.bool_) if mask.dtype == np.uint8 else mask.astype(bool)
    if label_mode == "unshifted":
        labels = np.where(on, ids, IGNORE)
        labels[cu[:-1][cu[:-1] < n]] = IGNORE  # a segment's first token is never a target
        return labels
    if label_mode == "shifted":
        labels = np.empty(n, dtype=np.int64)
        labels[:-1] = np.where(on[1:], ids[1:], IGNORE)
        labels[cu[1:][cu[1:] > 0] - 1] = IGNORE  # a segment's last token predicts nothing
        return labels
    check_label_mode(label_mode)


def labels_per_pack(mask: np.ndarray, seg_lens: np.ndarray, seg_off: np.ndarray, roles: np.ndarray,
                    shared_prompt: bool) -> np.ndarray:
    """int64 [P]: positions with a label in each pack (the same in both label modes): its mask's ones less the
    segments whose first token is a mask one, since a segment's first token is never a target. In the
    shared-prompt layout (`shared_prompt`, a shard holding PROMPT segments) a reply's first token is trained
    (it follows its prompt), so only the prompts lose theirs. `mask` holds the packs' tokens back to back,
    seg_off [P+1] their segments' ranges in seg_lens / roles (from 0). Stored per pack by the shard writer."""
    packs = len(seg_off) - 1
    if packs == 0:
        return np.zeros(0, np.int64)
    seg_off = np.asarray(seg_off, np.int64)
    tok_off = np.concatenate([[0], np.cumsum(seg_lens, dtype=np.int64)])
    first = mask[tok_off[:-1]].astype(np.int64)
    if shared_prompt:
        first = first * (np.asarray(roles) == PROMPT)
    total = np.add.reduceat(mask, tok_off[seg_off[:-1]], dtype=np.int64)
    return total - np.add.reduceat(first, seg_off[:-1])


def positions(seg_lens: np.ndarray, cu: np.ndarray) -> np.ndarray:
    """int64 position ids restarting at 0 in every segment."""
    return np.arange(int(cu[-1]), dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64, copy=False), seg_lens)


