"""Stage 1, tokenize: any source (packer.build.sources) -> tokenized Arrow chunks (packer.core.formats.tokenized).

A map over chunks of records (JSON Lines lines, a Parquet row group, Arrow record batches): each chunk
is read by its worker, rendered into spans, batch-encoded by the Rust tokenizer and written as
`chunk-NNNNN.arrow` on its own, so any executor can run the chunks.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from packer.core import config as C
from packer.core.errors import ConfigError, InputError
from packer.core.executors import Executor, resolve
from packer.build import sources
from packer.build.sources import Chunk, Columns, Record
from packer.core.storage import expand, identity
from packer.core.manifest import Manifest, commit_stage, current
from packer.core.progress import progress
from packer.build import encoders
from packer.build.encoders.reference import ENCODE_BATCH
from packer.build.templates import load_sft_template, make_renderer, uses_jinja
from packer.build.load_tokenizer import TokenizerInfo
from packer.core.formats.tokenized import FORMAT, SCHEMA, SCHEMA_IMAGES, VERSION, chunk_name, examples_table

@dataclass(frozen=True)
class Job:
    """Everything a worker needs to tokenize any chunk (picklable: sent once per worker)."""

    tokenizer: TokenizerInfo
    config: C.TokenizeConfig
    inputs: tuple[C.InputSpec, ...]
    file_source: tuple[int, ...]
    """Per input file (globs expanded), the index of the input it came from."""
    out: str
    backend: str = "tokenizers"
    """The encoder (packer.build.encoders) the driver chose; the fast one is checked against tokenizers."""


@dataclass
class ChunkResult:
    index: int
    file_index: int
    records: int
    examples: int
    tokens: int
    loss_tokens: int
    skipped: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)
    spans: int = 0
    spans_checked: int = 0
    image_files: dict = field(default_factory=dict)
    """Runs with images: sha256 of every image file or URL the records name (not data: URIs), by reference."""
    """Spans the run-time gate re-encoded with tokenizers (the fast backend only)."""


_JOB: Job | None = None
_RENDERERS: dict[int, object] = {}


def _init_worker(job: Job | None) -> None:
    global _JOB
    _JOB = job
    _RENDERERS.clear()


def _encoder(job: Job, backend: str) -> encoders.Encoder:
    return encoders.load(backend, job.tokenizer.json)


FIELDS = ("query_field", "response_field", "messages_field", "text_field", "tools_field", "prompt_field",
          "chosen_field", "rejected_field", "completion_field", "label_field")


def _fields(spec: C.InputSpec, cfg: C.TokenizeConfig) -> dict[str, str]:
    return {name: getattr(spec, name, None) or getattr(cfg, name) for name in FIELDS}


def columns(spec: C.InputSpec, cfg: C.TokenizeConfig) -> Columns:
    """The record fields a table input must (or may) have, for the run's kind."""
    f = _fields(spec, cfg)
    if cfg.kind == "sft":
        return Columns(required=(f["query_field"], f["response_field"]))
    if cfg.kind == "text":
        return Columns(required=(f["text_field"],))
    if cfg.kind == "preference":  # the format is per record: every field any format reads
        return Columns(optional=(f["prompt_field"], f["chosen_field"], f["rejected_field"], f["completion_field"],
                                 f["label_field"], f["tools_field"], "input", "preferred_output",
                                 "non_preferred_output"))
    fmt = spec.chat_format or cfg.chat_format
    optional = (f["tools_field"], "system")  # ShareGPT exports keep the system prompt in its own column
    if fmt == "openai" or f["messages_field"] != "messages":
        return Columns(required=(f["messages_field"],), optional=optional)
    return Columns(any_of=(f["messages_field"], "conversations"), optional=optional)


def _job() -> Job:
    """This process's job, set by _init_worker: an executor runs the initializer before any map step."""
    if _JOB is None:
        raise ConfigError("the executor ran tokenize_chunk without its initializer: an executor must call "
                          "initializer(*initargs) in each process before fn (see packer.core.executors)")
    return _JOB


def _renderer(source: int):
    if source not in _RENDERERS:
        job = _job()
        spec, cfg = job.inputs[source], job.config
        _RENDERERS[source] = make_renderer(cfg.kind, cfg.template, _fields(spec, cfg), job.tokenizer.chat_template,
                                           job.tokenizer.special, chat_format=spec.chat_format or cfg.chat_format,
                                           train_on=cfg.train_on, tools_field=_fields(spec, cfg)["tools_field"],
                                           weight_field=cfg.weight_field, max_render_chars=cfg.max_render_chars,
                                           render_budget=cfg.render_budget,
                                           preference_format=cfg.preference_format, vision=_vision(job))
    return _RENDERERS[source]


_VISION: dict = {}


def _vision(job: Job):
    """This process's image processor (runs with --processor), loaded once."""
    if job.config.processor is None:
        return None
    key = (job.config.processor, job.tokenizer.fingerprint)
    if _VISION.get("key") != key:  # another run in this process (workers=0) with another processor or tokenizer
        _VISION.clear()
        _VISION["key"] = key
    if "proc" not in _VISION:
        from packer.build.images import VisionProcessor

        proc = VisionProcessor(job.config.processor)
        token_id = job.tokenizer.build().token_to_id(proc.image_token)
        if token_id is None:
            raise ConfigError(f"{job.config.processor}: the tokenizer has no token {proc.image_token!r}, the image "
                              "placeholder its processor uses; pass the model's own tokenizer (the processor folder)")
        _VISION.update(proc=proc, token_id=int(token_id))
    return _VISION["proc"]


def _error_reason(e: InputError) -> str:
    """A short, countable reason for the manifest's skip counts."""
    if e.field is None:
        return "malformed JSON" if "JSON" in e.reason else e.reason.split(" (")[0]
    field = re.sub(r"\[\d+\]", "", e.field)  # messages[3].role -> messages.role: one count for all turns
    return f"{field}: {e.reason.split(' (')[0]}"


def tokenize_chunk(chunk: Chunk) -> ChunkResult:
    """Map step: one chunk of records -> one Arrow file (one record batch per chunk_records records).
    Pure: output bytes depend on the chunk only. Memory is bounded by chunk_records records."""
    job = _job()
    source = job.file_source[chunk.file_index]
    render = _renderer(source)
    cols = columns(job.inputs[source], job.config)
    skipped: Counter[str] = Counter()
    errors: list[str] = []
    counts = Counter()
    fast = _fast_fields(job, source)
    kind = sources.kind_of(chunk.path)
    with pa.OSFile(str(Path(job.out) / chunk_name(chunk.index)), "wb") as sink, \
            pa.ipc.new_file(sink, SCHEMA_IMAGES if job.config.processor else SCHEMA) as writer:
        number = chunk.first_record
        if fast is not None:  # sft and text: whole batches rendered at once
            for rendered, records in _whole_batches(job, chunk, cols, fast, kind, number):
                if rendered is None:  # something in the batch needs the per-record path: its errors, its skips
                    rendered = _render_records(job, render, records(), skipped, errors)
                _encode_batch(job, chunk, rendered, writer, counts)
                number += rendered.records
        else:
            batch: list = []
            for record in sources.read(chunk, cols):
                batch.append((number, record))
                number += 1
                if len(batch) == job.config.chunk_records:
                    _encode_batch(job, chunk, _render_records(job, render, batch, skipped, errors), writer, counts)
                    batch = []
            if batch:
                _encode_batch(job, chunk, _render_records(job, render, batch, skipped, errors), writer, counts)
        if not counts["records"]:
            _encode_batch(job, chunk, _render_records(job, render, [], skipped, errors), writer, counts)
    if counts["records"] != chunk.records:  # the file changed between scan and read
        raise InputError(chunk.path, None, None, f"gave {counts['records']} records where its metadata said "
                         f"{chunk.records}", "the input changed while it was read; run again")
    pa.default_memory_pool().release_unused()  # hand the chunk's buffers back: memory stays one chunk
    return ChunkResult(chunk.index, chunk.file_index, counts["records"], counts["examples"], counts["tokens"],
                       counts["loss_tokens"], dict(skipped), errors, counts["spans"], counts["spans_checked"],
                       dict(sorted(_VISION.pop("files", {}).items())))


@dataclass
class _Rendered:
    """One batch's examples as text spans, ready to encode.

    texts [S] and span_loss [S] (the spans of every example in turn), spans_per_example [N], and per
    example its record number, its position (line or row) and where it is (for an error)."""

    records: int
    texts: list[str]
    span_loss: Sequence[bool]
    spans_per_example: Sequence[int]
    keep_number: Sequence[int]
    keep_position: Sequence[int]
    where: Callable[[int], str]
    roles: Sequence[int] | None = None
    """Per example, its role (packer.build.preference; None: every example plain)."""
    eos: Sequence[bool] | None = None
    """Per example, whether EOS is appended (None: as appends_eos says for the run)."""
    images: list | None = None
    """Runs with images: per example its images as (uint8 pixels, grid) (packer.build.images.ImageSpans)."""


def _whole_batches(job: Job, chunk: Chunk, cols, fields: tuple[str, ...], kind: str, number: int):
    """sft and text records, chunk_records at a time: (the batch rendered at once, or None when a record needs
    the per-record path; a function giving the batch's (number, Record) pairs for that path, to be called
    before the next batch is asked for). JSON Lines are decoded a batch at a time, tables read by column."""
    size = job.config.chunk_records
    if kind == "table":
        for in_chunk, block in sources.table.blocks(chunk, cols, size):
            yield (_render_table(job, chunk, block, in_chunk, number, fields),
                   lambda: list(enumerate(sources.table.records(chunk, block, in_chunk), start=number)))
            number += block.num_rows
        return
    for line_numbers, raws in sources.jsonl.line_blocks(chunk, size):
        yield (_render_block(job, chunk.path, line_numbers, raws, number, fields),
               lambda: [(number + i, Record(chunk.path, n, n, _parsed(chunk.path, n, raw)))
                        for i, (n, raw) in enumerate(zip(line_numbers, raws))])
        number += len(raws)


def _parsed(path: str, line: int, raw: bytes) -> dict | InputError:
    try:
        return sources.jsonl.parse_line(path, line, raw)
    except InputError as e:
        return e


_DECODERS: dict[tuple[str, ...], object] = {}


def _fast_fields(job: Job, source: int) -> tuple[str, ...] | None:
    """The fields the whole-batch path reads for this source (sft: query and response; text: the text), or
    None where records take the per-record path (chats: their messages need normalizing one by one)."""
    f = _fields(job.inputs[source], job.config)
    if job.config.kind == "sft":
        return f["query_field"], f["response_field"]
    if job.config.kind == "text":
        return (f["text_field"],)
    return None


def _render_block(job: Job, path: str, lines: list[int], block: list[bytes], first: int, fields: tuple[str, ...]
                  ) -> _Rendered | None:
    """A block of raw JSON Lines (their line numbers, their bytes) decoded in one call and rendered at once, or
    None when any
    record is not plainly good (not an object, a field missing, not a string or empty, anything msgspec
    refuses): then the per-record path gives each record's exact error or skip. Same spans as the per-record
    path (the same template, the same checks), at a fraction of its Python work per record."""
    decode = _DECODERS.get(fields)
    if decode is None:
        names = [f"f{i}" for i in range(len(fields))]
        record = msgspec.defstruct("Record", [(n, str) for n in names], rename=dict(zip(names, fields)))
        decode = _DECODERS[fields] = msgspec.json.Decoder(list[record]).decode
    try:
        rows = decode(b"[" + b",".join(block) + b"]")
    except msgspec.MsgspecError:
        return None
    columns = [list(map(operator.attrgetter(f"f{i}"), rows)) for i in range(len(fields))]
    return _render_columns(job, columns, first, lines, lambda i: f"{path}:{lines[i]}")


def _render_table(job: Job, chunk: Chunk, block: pa.Table, in_chunk: int, first: int, fields: tuple[str, ...]
                  ) -> _Rendered | None:
    """A block of table rows rendered from its columns at once (no dict per row), or None when any value is
    not a non-empty string (a null, another type): then the per-record path gives each record's exact error
    or skip. Same spans as the per-record path."""
    columns = sources.table.strings(block, fields)
    if columns is None:
        return None
    positions, where = sources.table.places(chunk, in_chunk, block.num_rows)
    return _render_columns(job, columns, first, positions, where)


def _render_columns(job: Job, columns: list[list[str]], first: int, positions: Sequence[int],
                    where: Callable[[int], str]) -> _Rendered | None:
    """sft or text records given as their fields' columns, rendered at once; None when any field is empty or
    only whitespace (the per-record path names it)."""
    if not all(all(map(str.strip, column)) for column in columns):
        return None  # an empty field: the per-record path names it
    n = len(columns[0])
    if job.config.kind == "text":
        texts, pattern = columns[0], [True]
    else:
        tpl = load_sft_template("alpaca" if job.config.template == "auto" else job.config.template)
        parts = [[tpl.prompt.replace("{query}", q) for q in columns[0]], columns[1]]
        if tpl.suffix:
            parts.append([tpl.suffix] * n)
        texts = [None] * (len(parts) * n)
        for k, part in enumerate(parts):
            texts[k::len(parts)] = part
        pattern = [False, True, True][:len(parts)]
    return _Rendered(n, texts, np.tile(np.asarray(pattern, bool), n), np.full(n, len(pattern), np.int64),
                     np.arange(first, first + n, dtype=np.int64), positions, where)


def _render_records(job: Job, render, batch: list, skipped: Counter, errors: list[str]) -> _Rendered:
    """The per-record path: each (record number, Record) rendered, bad ones raised or counted (skip_bad).
    Preference records give several rows each (a pair's chosen then rejected, or a KTO completion and, added here
    for the batch, its mismatched KL row), all under the record's number (packer.build.preference)."""
    preference = job.config.kind == "preference"
    kept: list[tuple[int, Any, Any, list]] = []
    # Per-record loop: JSON decoding and template rendering are per-record by nature; the token-level
    # work is whole-array.
    for number, rec in batch:
        try:
            if isinstance(rec.value, InputError):
                raise rec.value
            out = render(rec.value, rec.where, rec.line)
        except InputError as e:
            _skip(job, e, skipped, errors)
            continue
        parsed, rows = out if preference else (None, [(0, out, None)])
        kept.append((number, rec, parsed, [(r.role, r.spans, r.eos) for r in rows] if preference else rows))
    if preference:
        kl = render.kl([p for _, _, p, _ in kept], [r.where for _, r, _, _ in kept], [r.line for _, r, _, _ in kept])
        for (_, _, _, rows), extra in zip(kept, kl):
            if extra is not None:
                rows.append((extra.role, extra.spans, extra.eos))
    texts: list[str] = []
    wheres: list[str] = []
    span_loss: list[bool] = []
    spans_per_example: list[int] = []
    keep_number: list[int] = []
    keep_position: list[int] = []
    roles: list[int] = []
    eos: list[bool | None] = []
    images: list = []
    for number, rec, _, rows in kept:
        for role, spans, add_eos in rows:
            images.append(getattr(spans, "images", []))
            if getattr(spans, "files", None):
                _VISION.setdefault("files", {}).update(spans.files)
            keep_number.append(number)
            keep_position.append(rec.position)
            wheres.append(f"{rec.where}:{rec.line}" if rec.line is not None else rec.where)
            spans_per_example.append(len(spans))
            roles.append(role)
            eos.append(add_eos)
            for text, loss in spans:
                texts.append(text)
                span_loss.append(loss)
    return _Rendered(len(batch), texts, span_loss, spans_per_example, keep_number, keep_position, wheres.__getitem__,
                     roles if preference else None, eos if preference else None,
                     images if job.config.processor else None)


def _skip(job: Job, e: InputError, skipped: Counter, errors: list[str]) -> None:
    """A bad record: raised, or counted (and its first errors kept) under skip_bad."""
    if not job.config.skip_bad:
        raise e
    skipped[_error_reason(e)] += 1
    if len(errors) < 5:
        errors.append(str(e))


def _encode_batch(job: Job, chunk: Chunk, r: _Rendered, writer, counts: Counter) -> None:
    """Encode one rendered batch and write it as one record batch (BOS and EOS added as ids)."""
    texts, span_loss, spans_per_example = r.texts, r.span_loss, r.spans_per_example
    keep_number, keep_position = r.keep_number, r.keep_position
    n = len(keep_number)
    info = job.tokenizer
    if info.spans_concatenate:
        encoded = _encoder(job, job.backend).encode(texts)
        counts.update(spans=len(texts))
        if job.backend != "tokenizers":  # the run-time gate: a seeded sample re-encoded by the reference
            picked = encoders.sample(len(texts), f"{chunk.path}:{chunk.first_record}:{r.records}:{counts['records']}",
                                     job.config.check_tokens)
            counts.update(spans_checked=len(picked))
            bad = encoders.check(texts, encoded, _encoder(job, "tokenizers"), picked)
            if bad is not None:
                example = int(np.searchsorted(np.cumsum(spans_per_example), bad, side="right"))
                (a, _), (b, _) = (_encoder(job, k).encode([texts[bad]]) for k in (job.backend, "tokenizers"))
                raise encoders.TokenMismatch(r.where(example), texts[bad], a.tolist(), b.tolist())
        ids, loss, lengths = _spans(encoded, span_loss, spans_per_example)
    else:
        ids, loss, lengths = _encode_joined(job.tokenizer.build(), texts, span_loss, spans_per_example)
    # Special tokens are added as ids, never as text: BOS (no loss) first, EOS (loss) last.
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1].astype(np.int64)
    if info.add_bos and info.bos_id is not None:
        # No double BOS: a template that writes {{ bos_token }} already put it in the text.
        first_span = np.concatenate([[0], np.cumsum(spans_per_example)])[:-1].astype(np.int64)
        bos_text = info.special.get("bos_token") or None
        needs = np.array([not (bos_text and texts[k].startswith(bos_text)) for k in first_span], dtype=bool) \
            if n else np.zeros(0, bool)
        at = starts[needs]
        ids = np.insert(ids, at, info.bos_id)
        loss = np.insert(loss, at, 0)
        lengths = lengths + needs
        starts = starts + np.cumsum(needs) - needs  # each example moves by the BOS ids before it
    ends = starts + lengths
    add_eos = np.asarray(r.eos, bool) if r.eos is not None else np.full(n, appends_eos(job.config, info), bool)
    if add_eos.any():
        # EOS is trained on when the example ends in trained-on text (a response, an assistant turn).
        last_span = np.cumsum(spans_per_example) - 1
        eos_loss = np.asarray(span_loss, dtype=np.uint8)[last_span] if n else np.zeros(0, np.uint8)
        ids = np.insert(ids, ends[add_eos], info.eos_id)
        loss = np.insert(loss, ends[add_eos], eos_loss[add_eos])
        lengths = lengths + add_eos
    roles = np.asarray(r.roles, np.uint8) if r.roles is not None else np.zeros(n, np.uint8)
    if r.images is not None:
        ids, loss = _check_placeholders(job, r, ids, loss, lengths)
    table = examples_table(np.asarray(keep_number, np.int64), np.full(n, chunk.file_index, np.int32),
                           np.asarray(keep_position, np.int64), lengths, ids, loss, roles, images=r.images)
    writer.write_table(table)
    counts.update(records=r.records, examples=n, tokens=int(lengths.sum()), loss_tokens=int(loss.sum()))


def _check_placeholders(job: Job, r: _Rendered, ids: np.ndarray, loss: np.ndarray, lengths: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Every example holds exactly its images' placeholder tokens, one run per image of prod(grid) / merge^2
    (packer.core.vision); placeholders are never training targets."""
    from packer.core.vision import PlaceholderError, check_runs

    proc, token_id = _VISION["proc"], _VISION["token_id"]
    is_image = np.asarray(ids) == token_id
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for k, ims in enumerate(r.images):
        a, b = int(starts[k]), int(starts[k + 1])
        if not ims and not is_image[a:b].any():
            continue
        want = [proc.placeholders(g) for _, g in ims]
        try:
            if proc.meta.mrope:  # Qwen-VL: positions are taken per run, so one run per image
                check_runs(ids[a:b], np.array([0, b - a]), token_id, want)
            elif int(is_image[a:b].sum()) != sum(want):  # LLaVA: the features fill the placeholders in order
                raise PlaceholderError(f"{int(is_image[a:b].sum())} image placeholders for {len(want)} images of "
                                       f"{sum(want)} tokens")
        except PlaceholderError as e:
            raise InputError(r.where(k), None, None, f"its tokens do not match its images: {e}",
                             "the tokenizer must encode the processor's image token as one id (pass the model's "
                             "own tokenizer)") from None
    loss = np.where(is_image, 0, loss).astype(np.uint8)
    return ids, loss


def _spans(encoded: tuple[np.ndarray, np.ndarray], span_loss: list[bool], spans_per_example: list[int]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every span encoded on its own and concatenated, so the loss mask follows the span boundaries exactly:
    flat ids uint32, flat loss uint8 and per-example lengths from the encoder's (ids, span lengths)."""
    ids, span_len = encoded
    n = len(spans_per_example)
    loss = np.repeat(np.asarray(span_loss, dtype=np.uint8), span_len)
    ex_of_span = np.repeat(np.arange(n), spans_per_example)
    lengths = np.bincount(ex_of_span, weights=span_len, minlength=n).astype(np.int64)
    return ids, loss, lengths


def _encode_batches(tok, texts: list[str]):
    """tok.encode_batch (with offsets) over ENCODE_BATCH texts at a time, yielding encodings."""
    for a in range(0, len(texts), ENCODE_BATCH):
        yield from tok.encode_batch(texts[a:a + ENCODE_BATCH], add_special_tokens=False)


def _encode_joined(tok, texts: list[str], span_loss: list[bool], spans_per_example: list[int]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode each example's joined text once; a token is trained on when its first character lies
    in a trained-on span (a token straddling prompt and answer counts as prompt)."""
    bounds = np.concatenate([[0], np.cumsum(spans_per_example)]).astype(np.int64)
    joined = ["".join(texts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    ids_parts, loss_parts, lengths = [], [], []
    flags = np.asarray(span_loss, dtype=np.uint8)
    # Per-example loop: only tokenizers that cannot encode spans separately come here.
    for e, a, b in zip(_encode_batches(tok, joined), bounds[:-1], bounds[1:]):
        ends = np.cumsum([len(t) for t in texts[a:b]])
        starts = np.fromiter((o[0] for o in e.offsets), dtype=np.int64, count=len(e.ids))
        span = np.minimum(np.searchsorted(ends, starts, side="right"), b - a - 1)
        ids_parts.append(np.asarray(e.ids, dtype=np.uint32))
        loss_parts.append(flags[a + span])
        lengths.append(len(e.ids))
    if not ids_parts:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(0, np.int64)
    return np.concatenate(ids_parts), np.concatenate(loss_parts), np.asarray(lengths, np.int64)


def tokenize(inputs: Sequence[str | C.InputSpec | Any], out: str | Path, config: C.TokenizeConfig, *,
             tokenizer: TokenizerInfo, executor: Executor | str | None = None, workers: int = 0,
             rehash: bool = False, rebuild: bool = False, details: dict | None = None) -> Manifest:
    """Stage 1: tokenize `inputs` into the folder `out`; returns its manifest (and does nothing when it is
    up to date).

    inputs: paths, globs, folders or URLs, optionally with per-source options ("a.parquet#query=q",
    see InputSpec.parse), InputSpecs, or Python data (a datasets.Dataset / IterableDataset or any
    iterable of dicts), which is first written to `out`'s sibling folder `inputs/` (content-addressed).
    rebuild: tokenize even when the existing output is up to date.
    details: filled with how the stage ran (the tokenizer backend, why, the gate's counts): what the
    report and the terminal summary state, and never the manifest (it is the same whichever backend ran).
    """
    details = {} if details is None else details
    out = Path(out)
    run = resolve(executor, workers)
    specs = [as_spec(s, out.parent / "inputs") for s in inputs]
    files, file_source = [], []
    for i, spec in enumerate(specs):  # every source is resolved and reached before any work
        for f in expand(spec.path):
            files.append(f)
            file_source.append(i)
    input_meta = [dict(identity(f), source=k) for f, k in zip(files, file_source)]
    cols = [columns(specs[k], config) for k in file_source]
    images = None
    if config.processor is not None:  # a folder the installed transformers cannot read says so before any work
        import dataclasses

        from packer.build.images import VisionProcessor, folder_identity

        proc = VisionProcessor(config.processor)
        token_id = tokenizer.build().token_to_id(proc.image_token)
        if token_id is None:
            raise ConfigError(f"{config.processor}: the tokenizer has no token {proc.image_token!r}, the image "
                              "placeholder its processor uses; pass the model's own tokenizer (the processor folder)")
        images = {"image_token": proc.image_token, "image_token_id": int(token_id),
                  "meta": dataclasses.asdict(proc.meta), "processor": folder_identity(config.processor)}
    lineage = {
        "stage": "tokenize", "version": VERSION, "config": C.to_dict(config),
        "sources": [s.reading() for s in specs], "inputs": input_meta,
        "tokenizer": tokenizer.fingerprint, "eos_id": tokenizer.eos_id,
        "template_text": _template_text(config.template),
        # The tokenizer's chat templates and special tokens render the text: editing them re-tokenizes.
        "chat_template": tokenizer.chat_template if config.kind == "chat" else None,
        "special_tokens": tokenizer.special if config.kind == "chat" else None,
        "images": images,  # the processor's files size the images: editing them re-tokenizes
    }
    digest = C.digest(lineage)
    existing = None if rebuild else current(out, FORMAT, VERSION, digest, rehash=rehash)
    if existing is not None and images is not None:
        from packer.build.images import changed_files

        if changed_files((existing.get("images") or {}).get("files") or {}):
            existing = None  # an image the records name changed: its pixels would be stale
    if existing is not None:
        details.update(backend=None, reason="up to date: not tokenized again")
        return existing
    try:
        choice = encoders.choose(tokenizer.json, tokenizer.spans_concatenate, config.tokenizer_backend)
    except BaseException:
        encoders.release()
        raise
    gate: dict[str, int] = {}

    def build(tmp: Path) -> dict:
        job = Job(tokenizer, config, tuple(specs), tuple(file_source), str(tmp), choice.backend)
        # Workers count the JSON Lines ranges; the driver sees sizes and counts, never the records.
        chunks = sources.scan(files, config.chunk_records, cols, lambda fn, items: run.map(fn, items),
                              sizes=[m["size"] for m in input_meta])
        if images is not None:  # an image store that cannot be reached fails now, not part way through
            from packer.build.images import check_stores

            firsts = {}
            for c in chunks:
                firsts.setdefault(c.file_index, c)
            check_stores(r for c in firsts.values() for r in sources.read(c, cols[c.file_index]))
        results = list(progress(run.map(tokenize_chunk, chunks, _init_worker, (job,)),
                                "tokenize", total=len(chunks), unit="chunk"))
        skipped: Counter[str] = Counter()
        per_file: list[Counter[str]] = [Counter(records=0, examples=0, tokens=0, loss_tokens=0, skipped=0)
                                        for _ in files]
        for r in results:
            skipped.update(r.skipped)
            per_file[r.file_index].update(records=r.records, examples=r.examples, tokens=r.tokens,
                                          loss_tokens=r.loss_tokens, skipped=sum(r.skipped.values()))
        _refuse_silent_loss(files, results, config)
        gate.update(spans=sum(r.spans for r in results), spans_checked=sum(r.spans_checked for r in results))
        return {
            "format": FORMAT, "version": VERSION, "digest": digest,
            "config": C.to_dict(config),
            # No weights here: the plan stage applies them, so a changed weight never re-tokenizes.
            "sources": [dict(s.reading(), files=[j for j, k in enumerate(file_source) if k == i])
                        for i, s in enumerate(specs)],
            "inputs": [dict(m, **{k: int(v) for k, v in c.items()}) for m, c in zip(input_meta, per_file)],
            "tokenizer": {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint,
                          "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                          "bos_id": tokenizer.bos_id, "add_bos": tokenizer.add_bos},
            "chunks": [{"file": chunk_name(r.index), "examples": r.examples, "tokens": r.tokens}
                       for r in results],
            "counts": {
                "records": sum(r.records for r in results),
                "examples": sum(r.examples for r in results),
                "tokens": sum(r.tokens for r in results),
                "loss_tokens": sum(r.loss_tokens for r in results),
                "skipped": sum(skipped.values()),
                "skipped_by_reason": dict(sorted(skipped.items())),
            },
            "first_skipped": [e for r in results for e in r.first_errors][:10],
            **({"images": dict(images, files={k: v for r in results for k, v in r.image_files.items()})}
               if images is not None else {}),
        }

    try:
        try:
            manifest = commit_stage(out, build)
        except encoders.TokenMismatch as e:
            if config.tokenizer_backend == "fast":
                raise ConfigError(f"--tokenizer-backend fast: {e}; nothing was written (--tokenizer-backend auto "
                                  "falls back to tokenizers)") from None
            # auto: the whole run again with the reference, so no id of the fast backend reaches the shards
            choice = encoders.Choice("tokenizers", encoders.reference.version(),
                                     f"auto: the fast backend passed the load-time gate, then differed from "
                                     f"tokenizers during the run, so the whole run was encoded again with tokenizers; "
                                     f"first difference: {e}")
            manifest = commit_stage(out, build)
    finally:  # the later stages run without this stage's encoders (in this process)
        _init_worker(None)
        encoders.release()
    details.update(backend=choice.backend, version=choice.version, reason=choice.reason,
                   reference=f"tokenizers {encoders.reference.version()}", check_tokens=config.check_tokens, **gate)
    return manifest


def as_spec(source: str | C.InputSpec | Any, spill_dir: Path) -> C.InputSpec:
    """An InputSpec for a path string, an InputSpec, or Python data (written to spill_dir first)."""
    if isinstance(source, C.InputSpec):
        return source
    if isinstance(source, (str, Path)):
        return C.InputSpec.parse(str(source))
    from packer.build.sources.python import spill

    return C.InputSpec(spill(source, spill_dir))


def _refuse_silent_loss(files: list[str], results: list[ChunkResult], config: C.TokenizeConfig) -> None:
    """Before anything is committed: no examples at all, or more skipped records than --max-bad allows,
    is an error naming the file (and the first bad line), never a short run that looks complete."""
    records = sum(r.records for r in results)
    bad = sum(sum(r.skipped.values()) for r in results)
    first = next((e for r in results for e in r.first_errors), "")
    names = ", ".join(files)
    if records == 0:
        raise InputError(names, None, None, "holds no records (empty, or only blank lines)",
                         "check the path given as DATA")
    if bad > C.bad_limit(config.max_bad, records):
        raise InputError(names, None, None, f"{bad:,} of {records:,} records are bad, over --max-bad "
                         f"{config.max_bad} (first: {first})", "fix the data, or raise --max-bad")
    if sum(r.examples for r in results) == 0:
        raise InputError(names, None, None, f"none of its {records:,} records gave an example (first: {first})",
                         "check the field names and --kind")


def _template_text(template: str) -> str | None:
    """A template file's contents take part in the digest, so editing it re-runs the stage."""
    p = Path(template)
    return p.read_text(encoding="utf-8") if template not in ("auto", "alpaca", "chatml", "none",
                                                              "tokenizer") and p.is_file() else None


def appends_eos(config: C.TokenizeConfig, info: TokenizerInfo) -> bool:
    """EOS ends every example, except chats rendered by a Jinja chat template (the tokenizer's or a
    file): the template ends each turn itself, as the model was trained."""
    return config.kind != "chat" or not uses_jinja(config.template, info.chat_template)
