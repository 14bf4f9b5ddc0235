"""`pack_dataset`: pack tokenized examples held in memory, through the same stages as the pipeline.

The examples become one tokenized Arrow chunk (stage 1's format), then the plan and write stages run
as usual, so the result is a `PackedShards` with the same items, manifests and guarantees. Without
`out=` the shards live in a temporary folder removed when the dataset is garbage-collected.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer.core import arrow, config as C
from packer.train.reader import PackedShards
from packer.core.labels import IGNORE
from packer.core.errors import ConfigError, InputError
from packer.core.buildlock import writing
from packer.core.manifest import commit_stage, current, remove_stale_temps
from packer.build.plan import plan_stage
from packer.pipeline import run_stages
from packer.build.write import write_stage
from packer.core.formats.tokenized import FORMAT, VERSION, chunk_name, examples_table, write_chunk

SOURCE = "examples"  # how in-memory input is named in errors and manifests


def _rows(examples: Iterable[Mapping]) -> tuple[list[list[int]], list[list[int]] | None]:
    """input_ids and labels lists, with each bad example named by its index and field."""
    if hasattr(examples, "column_names") and "input_ids" in getattr(examples, "column_names", []):
        cols = examples.column_names  # a Hugging Face datasets.Dataset: take whole columns
        ids = list(examples["input_ids"])
        labels = list(examples["labels"]) if "labels" in cols else None
    else:
        ids, labels, has_labels = [], [], None
        for i, ex in enumerate(examples):
            if not isinstance(ex, Mapping) or "input_ids" not in ex:
                keys = ", ".join(sorted(ex)) if isinstance(ex, Mapping) else type(ex).__name__
                raise InputError(SOURCE, i, "input_ids", f"missing (keys: {keys})",
                                 "each example needs input_ids (and optionally labels, -100 for no loss)")
            ids.append(ex["input_ids"])
            if has_labels is None:
                has_labels = "labels" in ex
            if has_labels != ("labels" in ex):
                raise InputError(SOURCE, i, "labels", "present in some examples and not others",
                                 "give labels for every example or for none")
            if has_labels:
                labels.append(ex["labels"])
        labels = labels if has_labels else None
    return ids, labels


INPUT_LABELS = ("unshifted", "shifted")


def _label_mask(flat: np.ndarray, lab: np.ndarray, offsets: np.ndarray, input_labels: str) -> np.ndarray:
    """uint8 loss mask over the tokens from labels given alongside them, refusing labels that are not targets.

    Packer stores which tokens are trained on, not label values, and makes the labels from the ids; so
    labels must be the ids themselves (or -100) where they are given:
        unshifted  labels[j] in {input_ids[j], -100}: the model shifts (Hugging Face convention)
        shifted    labels[j] in {input_ids[j + 1], -100}, and -100 at each example's last token
    """
    if input_labels not in INPUT_LABELS:
        raise ConfigError(f"input_labels '{input_labels}' is not one of {', '.join(INPUT_LABELS)}")
    on = lab != IGNORE
    if input_labels == "unshifted":
        target = flat
    else:
        target = np.empty_like(flat)
        target[:-1] = flat[1:]
        target[offsets[1:] - 1] = IGNORE  # an example's last token predicts nothing in it
    bad = np.flatnonzero(on & (lab != target))
    if bad.size:
        j = int(bad[0])
        i = int(np.searchsorted(offsets, j, "right") - 1)
        pos = j - int(offsets[i])
        want = "-100" if target[j] == IGNORE else f"{int(target[j])} or -100"
        other = "shifted" if input_labels == "unshifted" else "unshifted"
        raise InputError(SOURCE, i, "labels", f"[{pos}] is {int(lab[j])}, expected {want} for input_labels="
                         f"'{input_labels}'", f"Packer trains on the input ids themselves and takes labels only as "
                         f"a mask: pass labels equal to the ids (or -100), input_labels='{other}' if your labels "
                         f"are {other}, or put custom targets into input_ids")
    if input_labels == "unshifted":
        return on.astype(np.uint8)
    mask = np.zeros(len(flat), np.uint8)
    mask[1:] = on[:-1]
    mask[offsets[:-1]] = 0  # an example's first token is no target (its label came from the example before)
    return mask


def _examples_table(examples: Iterable[Mapping], input_labels: str = "unshifted") -> tuple[pa.Table, int]:
    """A stage-1 table from examples {input_ids, labels?}; returns it and the largest token id + 1."""
    ids, labels = _rows(examples)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    try:
        flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]) if ids else np.zeros(0, np.int64)
    except (TypeError, ValueError):
        bad = next(i for i, x in enumerate(ids) if not all(isinstance(t, (int, np.integer)) for t in x))
        raise InputError(SOURCE, bad, "input_ids", "must be a list of integer token ids") from None
    for i in np.flatnonzero(lengths == 0)[:1]:
        raise InputError(SOURCE, int(i), "input_ids", "is empty")
    if flat.size and (flat.min() < 0 or flat.max() >= 2**32):
        i = int(np.searchsorted(np.cumsum(lengths), np.flatnonzero((flat < 0) | (flat >= 2**32))[0], "right"))
        raise InputError(SOURCE, i, "input_ids", "has an id outside 0..2**32-1")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if labels is None:
        mask = np.ones(len(flat), np.uint8)
    else:
        for i, (x, y) in enumerate(zip(ids, labels)):
            if len(y) != len(x):
                raise InputError(SOURCE, i, "labels", f"has {len(y)} entries, input_ids has {len(x)}")
        lab = np.concatenate([np.asarray(y, dtype=np.int64) for y in labels]) if labels else np.zeros(0, np.int64)
        mask = _label_mask(flat, lab, offsets, input_labels)
    n = len(ids)
    table = examples_table(np.arange(n), np.zeros(n, np.int32), np.arange(1, n + 1), lengths, flat, mask)
    return table, int(flat.max()) + 1 if flat.size else 1


def _tokenized_stage(table: pa.Table, vocab_size: int, eos_id: int | None, out: Path, rebuild: bool = False) -> dict:
    """Write the table as a tokenized stage folder (skipped when the same examples are already there)."""
    sink = pa.BufferOutputStream()
    write_chunk(table, sink)
    data = sink.getvalue().to_pybytes()
    digest = C.digest({"stage": "tokenize", "version": VERSION, "examples": hashlib.sha256(data).hexdigest(),
                       "vocab_size": vocab_size, "eos_id": eos_id})
    existing = None if rebuild else current(out, FORMAT, VERSION, digest)
    if existing is not None:
        return existing

    def build(tmp: Path) -> dict:
        (tmp / chunk_name(0)).write_bytes(data)
        n, tokens = table.num_rows, int(np.sum(arrow.to_numpy(table.column("length")), dtype=np.int64))
        loss_tokens = int(arrow.to_numpy(table.column("loss_mask").combine_chunks().flatten()).sum(dtype=np.int64))
        return {"format": FORMAT, "version": VERSION, "digest": digest, "config": {"kind": "examples"},
                "sources": [{"path": SOURCE, "weight": 1.0, "files": [0]}],
                "inputs": [{"path": SOURCE, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "source": 0,
                            "records": n, "examples": n, "tokens": tokens, "loss_tokens": loss_tokens, "skipped": 0}],
                "tokenizer": {"name": None, "fingerprint": None, "vocab_size": vocab_size, "eos_id": eos_id,
                              "bos_id": None, "add_bos": False},
                "chunks": [{"file": chunk_name(0), "examples": n, "tokens": tokens}],
                "counts": {"records": n, "examples": n, "tokens": tokens,
                           "loss_tokens": loss_tokens,
                           "skipped": 0, "skipped_by_reason": {}},
                "first_skipped": []}

    return commit_stage(out, build)


def pack_dataset(examples: Sequence[Mapping] | Iterable[Mapping], pack_len: int, *, out: str | Path | None = None,
                 label_mode: str = "unshifted", input_labels: str = "unshifted", vocab_size: int | None = None,
                 eos_id: int | None = None, **options) -> PackedShards:
    """Pack tokenized examples ({input_ids, labels?}, labels -100 where no loss; a list or a Hugging
    Face `datasets.Dataset`) into a `PackedShards` whose items match the pipeline's.

    out: a folder to keep the run in (tokenized/, plan/, shards/): the next call with the same
    examples and settings memory-maps it instead of packing again.
    input_labels: how given labels align with input_ids: "unshifted" (labels[j] is input_ids[j] or -100,
    the Hugging Face convention) or "shifted" (labels[j] is input_ids[j + 1] or -100). Labels are kept
    as a loss mask, so any other label value is refused with an error naming the example.
    options: any field of PlanConfig or WriteConfig by name (algorithm, overlong, seed, max_segments,
    time_limit, shuffle, shard_bytes), the names `packer pack` and `packed_dataset_from_files` take
    too; an unknown name is an error.
    """
    pcfg, wcfg = C.configs_from_options("pack_dataset", {"pack_len": pack_len, **options}, C.PlanConfig, C.WriteConfig)
    table, max_id = _examples_table(examples, input_labels)
    vocab = max(vocab_size or 0, max_id)
    run = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="packer-"))
    with writing(run, "pack_dataset"):
        remove_stale_temps(run, locked=True)
        run_stages([
            ("tokenize", run / "tokenized", lambda again: _tokenized_stage(table, vocab, eos_id, run / "tokenized", again)),
            ("plan", run / "plan", lambda again: plan_stage(run / "tokenized", run / "plan", pcfg, rebuild=again)),
            ("write", run / "shards", lambda again: write_stage(run / "tokenized", run / "plan", run / "shards", wcfg,
                                                                rebuild=again)),
        ])
    ds = PackedShards(run / "shards", label_mode=label_mode)
    if out is None:
        weakref.finalize(ds, shutil.rmtree, str(run), True)
    return ds
