"""Frozen configuration of each stage; a config's digest is part of every output's lineage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from packer.errors import ConfigError

KINDS = ("sft", "chat", "text")
OVERLONG = ("truncate", "drop", "split", "error")


@dataclass(frozen=True)
class InputSpec:
    """One input file and the field names its records use (each file may name them differently)."""

    path: str
    """Path to a .jsonl, .jsonl.gz or .jsonl.zst file."""
    query_field: str | None = None
    """sft: field holding the prompt; None takes TokenizeConfig.query_field."""
    response_field: str | None = None
    """sft: field holding the answer; None takes TokenizeConfig.response_field."""
    messages_field: str | None = None
    """chat: field holding the list of {role, content} messages."""
    text_field: str | None = None
    """text: field holding the document."""

    @classmethod
    def parse(cls, spec: str) -> "InputSpec":
        """Parse ``path`` or ``path#query=question,response=answer`` (the CLI form of per-file fields)."""
        path, _, opts = spec.partition("#")
        kwargs: dict[str, str] = {}
        for item in filter(None, opts.split(",")):
            key, eq, value = item.partition("=")
            name = f"{key.strip()}_field"
            if not eq or name not in {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(
                    f"input '{spec}': cannot read '{item}'; use PATH#query=F,response=F "
                    "(keys: query, response, messages, text)"
                )
            kwargs[name] = value.strip()
        return cls(path=path, **kwargs)


def bad_limit(max_bad: str, records: int) -> int:
    """The number of records --max-bad allows to be skipped out of `records`."""
    text = str(max_bad).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 <= share <= 1:
                raise ValueError
            return int(share * records)
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise ConfigError(f"max_bad '{max_bad}' is neither a share like '1%' nor a count like '50'") from None


@dataclass(frozen=True)
class TokenizeConfig:
    """Stage 1: how records become token ids and loss masks."""

    kind: str = "sft"
    """Record kind: 'sft' (query + response), 'chat' (messages) or 'text' (documents)."""
    template: str = "auto"
    """Prompt template: a built-in name (alpaca, chatml, none, tokenizer) or a template file; 'auto'
    is alpaca for sft, the tokenizer's chat template (else chatml) for chat, none for text."""
    query_field: str = "query"
    response_field: str = "response"
    messages_field: str = "messages"
    text_field: str = "text"
    eos_token: str | None = None
    """Overrides the EOS token found in tokenizer_config.json."""
    add_bos: bool | None = None
    """Prepend BOS to every example; None follows tokenizer_config.json's add_bos_token."""
    skip_bad: bool = False
    """Skip and count malformed records instead of stopping at the first one."""
    max_bad: str = "1%"
    """With skip_bad, the most records that may be skipped before the run fails: a share ('1%') of all
    records or a count ('50'). A damaged or truncated compressed file is never skipped."""
    chunk_records: int = 8192
    """Records per map task: the unit of parallelism and the bound on memory."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if self.chunk_records < 1:
            raise ConfigError("chunk_records must be at least 1")
        bad_limit(self.max_bad, 1)  # refuses a malformed value now, not after tokenizing


@dataclass(frozen=True)
class PlanConfig:
    """Stage 2: how examples are cut to the pack length and assigned to packs."""

    pack_len: int = 2048
    """Tokens per pack (the training sequence length)."""
    algorithm: str = "bfd"
    """Packing algorithm: see packer.planner.ALGORITHMS."""
    overlong: str = "truncate"
    """What to do with an example longer than pack_len: truncate (keep the prompt, cut the end),
    drop, split (into pack_len pieces, each its own segment) or error."""
    seed: int = 0
    max_segments: int | None = None
    """Cap on examples per pack (some kernels and CUDA graphs need one)."""
    time_limit: float | None = None
    """The ortools planner's work budget in deterministic seconds (None: 10): work is counted, not
    timed, so the same lengths and seed give the same plan on any machine, loaded or not."""

    def __post_init__(self) -> None:
        if self.pack_len < 1:
            raise ConfigError(f"pack_len must be positive, got {self.pack_len}")
        if self.overlong not in OVERLONG:
            raise ConfigError(f"overlong '{self.overlong}' is not one of {', '.join(OVERLONG)}")
        if self.max_segments is not None and self.max_segments < 1:
            raise ConfigError("max_segments must be at least 1")
        if self.time_limit is not None and self.algorithm != "ortools":
            raise ConfigError(f"time_limit applies to the ortools planner only; {self.algorithm} would ignore it: "
                              "drop it (--time-limit) or choose --algorithm ortools")


@dataclass(frozen=True)
class WriteConfig:
    """Stage 3: how packs are laid out in shard files."""

    shard_bytes: int = 256 * 2**20
    """Upper bound on a shard file's size, kept exactly; only a single pack too large for it alone gets
    a shard of its own that exceeds it."""
    shuffle: bool = True
    """Write packs in a seeded random order, so that a sequential reader sees a mix."""
    seed: int = 0


def to_dict(cfg: object) -> dict:
    """A config as plain JSON-able data."""
    return dataclasses.asdict(cfg)  # type: ignore[arg-type]


def digest(data: object) -> str:
    """sha256 of canonical JSON: the identity of a config (plus whatever lineage is folded in)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def configs_from_options(where: str, options: dict, *classes: type) -> list:
    """One config per class from flat keyword options named as the configs' fields (a field several
    configs share, such as seed, goes to each). An unknown name is a ConfigError listing the valid ones:
    every entry point takes the same names, and none is silently ignored."""
    fields = {c: {f.name for f in dataclasses.fields(c)} for c in classes}
    valid = sorted(set().union(*fields.values()))
    for name in options:
        if name not in valid:
            raise ConfigError(f"{where}: unknown option '{name}'; the options are the fields of "
                              f"{', '.join(c.__name__ for c in classes)}: {', '.join(valid)}")
    return [c(**{k: v for k, v in options.items() if k in fields[c]}) for c in classes]


def default_overlong(kind: str) -> str:
    """Text documents are split; sft and chat examples are truncated, keeping the prompt."""
    return "split" if kind == "text" else "truncate"


__all__ = [
    "InputSpec", "TokenizeConfig", "PlanConfig", "WriteConfig", "to_dict", "digest",
    "default_overlong", "configs_from_options", "KINDS", "OVERLONG",
]
