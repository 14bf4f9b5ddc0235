"""Frozen configuration of each stage; a config's digest is part of every output's lineage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from packer.core.errors import ConfigError

KINDS = ("sft", "chat", "text", "preference")

# Limits on numbers whose memory or work grows with their value, checked before anything is allocated.
MAX_PACK_LEN = 1 << 22
"""4,194,304 tokens a pack: beyond any context length trained today (1-2M); the planners' length histograms
and the report take 8 bytes per possible length, and a batch row is pack_len tokens."""
MAX_CHUNK_RECORDS = 1 << 20
"""Records a map task holds in memory at once (rendered texts and their spans)."""
MAX_WEIGHT = 1e6
"""An input repeated more than a million times is not a mixture; the plan's memory also checks the total."""
MAX_TIME_LIMIT = 7 * 86_400.0
"""A week of the ortools planner's deterministic work budget."""
MAX_SHARD_BYTES = 1 << 40
MAX_SEED = 2**63 - 1


def whole(name: str, value: object, lo: int, hi: int, why: str = "") -> int:
    """`value` as an int in [lo, hi], else a ConfigError naming the option (`name`), the range and why."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} is {value!r}: give a whole number from {lo:,} to {hi:,}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} is {value:,}: it must be from {lo:,} to {hi:,}" + (f" ({why})" if why else ""))
    return value


def number(name: str, value: object, lo: float, hi: float, why: str = "", *, above: bool = False) -> float:
    """`value` as a finite float in [lo, hi] (above: lo excluded), else a ConfigError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} is {value!r}: give a finite number")
    if value < lo or value > hi or (above and value == lo):
        bound = f"above {lo:g}" if above else f"from {lo:g}"
        raise ConfigError(f"{name} is {value:g}: it must be {bound} up to {hi:g}" + (f" ({why})" if why else ""))
    return float(value)
OVERLONG = ("truncate", "drop", "split", "error")
TOKENIZER_BACKENDS = ("auto", "fast", "tokenizers")
CHECK_TOKENS = ("sample", "all")
LAYOUTS = ("best-fit", "wrapped", "pairs", "shared-prompt")
EVEN = ("none", "tokens", "compute")
PREFERENCE_FORMATS = ("auto", "explicit", "openai", "implicit", "unpaired")
CHAT_FORMATS = ("auto", "openai", "sharegpt")
TRAIN_ROLES = ("system", "user", "assistant", "tool")
PARTS = ("text", "reasoning", "tool_calls")


def train_on(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(roles, parts) of a train_on value: "assistant" (the default), "assistant,tool", or "text,tool_calls"
    (assistant turns without their reasoning): roles from TRAIN_ROLES and parts from PARTS; parts alone
    imply assistant turns, and no parts means every part."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in TRAIN_ROLES + PARTS]
    if bad or not items:
        raise ConfigError(f"train_on '{text}': '{bad[0] if bad else ''}' is not a role "
                          f"({', '.join(TRAIN_ROLES)}) or an assistant part ({', '.join(PARTS)})")
    roles = {t for t in items if t in TRAIN_ROLES}
    parts = {t for t in items if t in PARTS}
    if parts:
        roles.add("assistant")
    return frozenset(roles), frozenset(parts or PARTS)


@dataclass(frozen=True)
class InputSpec:
    """One input (a file, a glob, a folder or a URL), the field names its records use, its chat format and
    its weight in the mixture (each source may name them differently)."""

    path: str
    """A .jsonl(.gz/.zst), .parquet or .arrow file, a save_to_disk folder, a glob, or an s3://, gs://, hf:// URL."""
    query_field: str | None = None
    """sft: field holding the prompt; None takes TokenizeConfig.query_field."""
    response_field: str | None = None
    """sft: field holding the answer; None takes TokenizeConfig.response_field."""
    messages_field: str | None = None
    """chat: field holding the list of messages."""
    text_field: str | None = None
    """text: field holding the document."""
    tools_field: str | None = None
    """chat: field holding the record's tool schemas."""
    chat_format: str | None = None
    """chat: openai, sharegpt or auto; None takes TokenizeConfig.chat_format."""
    weight: float = 1.0
    """Multiplier on this source's examples in the mixture: 0.5 keeps a seeded half, 2 repeats every
    example twice, 2.5 twice plus a seeded half. Applied by the plan stage (never re-tokenizes)."""

    def __post_init__(self) -> None:
        number(f"input '{self.path}': weight", self.weight, 0, MAX_WEIGHT,
               "a weight repeats or samples the input's examples; more than a million repeats is not a mixture")

    @classmethod
    def parse(cls, spec: str) -> "InputSpec":
        """Parse ``path`` or ``path#query=question,response=answer,weight=0.5`` (the CLI form):
        field names (query, response, messages, text, tools), format=openai|sharegpt|auto, and
        weight=W or epochs=N (an integer weight)."""
        path, _, opts = spec.partition("#")
        kwargs: dict = {}
        fields = {f.name for f in dataclasses.fields(cls)}
        for item in filter(None, opts.split(",")):
            key, eq, value = (t.strip() for t in item.partition("="))
            if eq and key in ("weight", "epochs"):
                try:
                    number = float(value) if key == "weight" else int(value)
                except ValueError:
                    raise ConfigError(f"input '{spec}': {key} '{value}' is not a{'' if key == 'weight' else 'n integer'} "
                                      "number") from None
                if "weight" in kwargs:
                    raise ConfigError(f"input '{spec}': give weight or epochs, once")
                kwargs["weight"] = number
            elif eq and key in ("format", "chat_format"):
                kwargs["chat_format"] = value
            elif eq and f"{key}_field" in fields:
                kwargs[f"{key}_field"] = value
            else:
                raise ConfigError(
                    f"input '{spec}': cannot read '{item}'; use PATH#query=F,response=F,weight=W "
                    "(keys: query, response, messages, text, tools, format, weight, epochs)"
                )
        if not path:
            raise ConfigError(f"input '{spec}' names no source")
        return cls(path=path, **kwargs)

    def reading(self) -> dict:
        """What decides how the source is read and tokenized (all but the weight, which the plan applies)."""
        d = dataclasses.asdict(self)
        d.pop("weight")
        return d


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
    """Record kind: 'sft' (query + response), 'chat' (messages), 'text' (documents) or 'preference' (pairs
    of replies to one prompt, or KTO's labelled completions: packer.build.preference)."""
    template: str = "auto"
    """Prompt template: a built-in name (alpaca, chatml, none, tokenizer) or a template file; 'auto'
    is alpaca for sft, the tokenizer's chat template (else chatml) for chat, none for text. For chat, also
    the name of one of the tokenizer's named chat templates (additional_chat_templates/NAME.jinja)."""
    query_field: str = "query"
    response_field: str = "response"
    messages_field: str = "messages"
    text_field: str = "text"
    tools_field: str = "tools"
    """chat: the record field holding its tool schemas (passed to the chat template as `tools`)."""
    chat_format: str = "auto"
    """chat: openai (messages), sharegpt (conversations with from/value) or auto (by the record's fields)."""
    train_on: str = "assistant"
    """chat: which turns carry the loss: roles (system, user, assistant, tool) and, within assistant turns,
    parts (text, reasoning, tool_calls); "text,tool_calls" trains assistant turns without their reasoning."""
    prompt_field: str = "prompt"
    """preference: the prompt (a string or messages)."""
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    completion_field: str = "completion"
    """preference, unpaired (KTO): the completion."""
    label_field: str = "label"
    """preference, unpaired (KTO): true for a desirable completion."""
    preference_format: str = "auto"
    """preference: explicit (prompt/chosen/rejected), openai (input/preferred_output/non_preferred_output),
    implicit (chosen/rejected sharing their prompt), unpaired (prompt/completion/label) or auto (per record,
    by its fields)."""
    weight_field: str = "weight"
    """chat: a message's 0/1 field that overrides train_on for that turn (OpenAI's fine-tuning format)."""
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
    max_render_chars: int = 1 << 24
    """chat: the most characters one record's chat-template rendering may have; over it the record is bad
    (an InputError, or counted with skip_bad)."""
    render_budget: int = 20_000_000
    """chat: the most work steps (attribute and item reads, calls, range items) one record's chat-template
    renderings may take together (~1.5M steps a second: ~13 s of Jinja on one core): a deterministic limit, never
    the clock."""
    processor: str | None = None
    """chat with images: the model's Hugging Face processor folder (preprocessor_config.json; packer.build.images):
    image parts are kept, sized by its image processor, and each image's placeholder token expanded to its
    tokens. None: image parts are refused (Packer packs text)."""
    tokenizer_backend: str = dataclasses.field(default="auto", metadata={"lineage": False})
    """auto (the fast backend where it loads the tokenizer and passes the gate, else tokenizers), fast (refuse
    where it cannot be used) or tokenizers (packer.build.encoders). Outside the lineage: every backend gives
    the ids tokenizers gives, so shards and manifests are byte-identical whichever ran."""
    check_tokens: str = dataclasses.field(default="sample", metadata={"lineage": False})
    """The run-time gate: re-encode a sample of every chunk's spans with tokenizers (its first 64 and 1% of the
    rest) or all of them (for proof on a new corpus or tokenizer). Outside the lineage, like the backend."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind '{self.kind}' is not one of {', '.join(KINDS)}")
        whole("chunk_records (--chunk-records)", self.chunk_records, 1, MAX_CHUNK_RECORDS,
              "a map task holds its chunk's records in memory")
        whole("max_render_chars (--max-render-chars)", self.max_render_chars, 1, 1 << 30)
        whole("render_budget (--render-budget)", self.render_budget, 1, 1 << 40)
        if self.tokenizer_backend not in TOKENIZER_BACKENDS:
            raise ConfigError(f"tokenizer_backend '{self.tokenizer_backend}' is not one of {', '.join(TOKENIZER_BACKENDS)}")
        if self.check_tokens not in CHECK_TOKENS:
            raise ConfigError(f"check_tokens '{self.check_tokens}' is not one of {', '.join(CHECK_TOKENS)}")
        bad_limit(self.max_bad, 1)  # refuses a malformed value now, not after tokenizing
        if self.preference_format not in PREFERENCE_FORMATS:
            raise ConfigError(f"preference_format '{self.preference_format}' is not one of "
                              f"{', '.join(PREFERENCE_FORMATS)}")
        if self.chat_format not in CHAT_FORMATS:
            raise ConfigError(f"chat_format '{self.chat_format}' is not one of {', '.join(CHAT_FORMATS)}")
        train_on(self.train_on)
        if self.processor is not None and self.kind != "chat":
            raise ConfigError(f"processor (--processor) is for --kind chat records with image parts, not --kind {self.kind}")


@dataclass(frozen=True)
class PlanConfig:
    """Stage 2: how examples are cut to the pack length and assigned to packs."""

    pack_len: int = 2048
    """Tokens per pack (the training sequence length)."""
    algorithm: str = "ortools"
    """Packing algorithm: see packer.build.planners.ALGORITHMS. The default searches for the fewest packs
    within a deterministic budget that grows with the data; bfd is the fast one-pass heuristic."""
    overlong: str = "truncate"
    """What to do with an example longer than pack_len: truncate (keep the prompt, cut the end),
    drop, split (into pack_len pieces, each its own segment) or error."""
    seed: int = 0
    max_segments: int | None = None
    """Cap on examples per pack (some kernels and CUDA graphs need one)."""
    weights: tuple[float, ...] = ()
    """Per input source, the multiplier on its examples (see InputSpec.weight); () weighs every source 1.
    `pack` fills it from the inputs' weights."""
    cp_size: int = 1
    """Context-parallel size N the packs are planned for: every example occupies its length rounded up to
    a multiple of 2N (inert padding), so N ranks each hold a whole, balanced share of every pack
    (PackedLoader(cp_rank=, cp_size=)); pack_len must be divisible by 2N. 1: no context parallelism."""
    layout: str = "best-fit"
    """best-fit: whole examples (or their over-long pieces) bin-packed by `algorithm`. wrapped (--kind text,
    pretraining): documents concatenated in order and cut every pack_len tokens, so every pack but the
    last is full; a document cut at a pack boundary continues in the next pack as its own segment
    (positions restart, its first label is masked) and the report counts those tokens."""
    time_limit: float | None = None
    """The ortools planner's work budget in deterministic seconds (None: packer.build.planners.ortools.default_budget of
    the number of examples, 1 s + 10 us an example, at most 300): work is counted, not timed, so the
    same lengths and seed give the same plan on any machine, loaded or not."""
    max_patches: int | None = None
    """Runs with images: the most vision patches (sum of t x h x w over its images) a pack may hold, so the
    vision encoder's batch is bounded; planned by first-fit decreasing over both capacities. None: no bound."""
    even: str = "none"
    """After packing, swap examples between packs so every pack's work is as near the mean as swaps of one
    example for one (or moves) allow (the same packs and examples; packer.build.planners.even): the loader's steps
    then cost alike on every rank, where a bin packer leaves light packs at its end (a pack of one long example
    stays as heavy as it is: swaps do not trade one example for several). tokens evens tokens; compute evens
    tokens + the attention terms of even_attention (a x tokens + b x L^2 / 2 per example); none keeps the packing
    as planned."""
    even_attention: tuple[tuple[float, int | None], ...] = ()
    """even="compute": per attention group, (cost of one query-key pair / cost of one token, window or None),
    from packer.core.cost.cost_model(model_config).relative() (the CLI's --model-config)."""

    def __post_init__(self) -> None:
        if self.max_patches is not None:
            whole("max_patches (--max-patches)", self.max_patches, 1, 1 << 40)
        whole("pack_len (--pack-len)", self.pack_len, 1, MAX_PACK_LEN,
              "the planners' histograms and every batch row grow with the pack length")
        if self.overlong not in OVERLONG:
            raise ConfigError(f"overlong '{self.overlong}' is not one of {', '.join(OVERLONG)}")
        if self.max_segments is not None:
            whole("max_segments (--max-segments)", self.max_segments, 1, self.pack_len,
                  "every segment holds at least one token")
        whole("seed (--seed)", self.seed, 0, MAX_SEED)
        whole("cp_size (--cp-size)", self.cp_size, 1, max(1, self.pack_len // 2),
              "each of 2 x cp_size chunks of a pack holds at least one token")
        if self.time_limit is not None:
            number("time_limit (--time-limit)", self.time_limit, 0, MAX_TIME_LIMIT)
        object.__setattr__(self, "weights", tuple(number("weights", w, 0, MAX_WEIGHT) for w in self.weights))
        from packer.core.context_parallel import check_cp_size

        check_cp_size(self.pack_len, self.cp_size)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout '{self.layout}' is not one of {', '.join(LAYOUTS)}")
        if self.even not in EVEN:
            raise ConfigError(f"even '{self.even}' is not one of {', '.join(EVEN)}")
        object.__setattr__(self, "even_attention", _attention_terms(self.even_attention))
        if self.even == "compute" and not self.even_attention:
            raise ConfigError("even 'compute' needs the model's attention cost: pass --model-config (the model's "
                              "config.json), or even_attention=packer.core.cost.cost_model(config).relative()")
        if self.even != "compute" and self.even_attention:
            raise ConfigError(f"even_attention (--model-config) is what --even compute evens by; with --even "
                              f"{self.even} it would be ignored: drop it or pass --even compute")
        if self.layout == "wrapped":
            given = [name for name, bad in (("algorithm", self.algorithm != "ortools"),
                                            ("time_limit", self.time_limit is not None),
                                            ("max_segments", self.max_segments is not None),
                                            ("overlong", self.overlong != "split"),
                                            ("cp_size", self.cp_size != 1),
                                            ("even", self.even != "none")) if bad]
            if given:
                raise ConfigError(f"layout wrapped cuts documents at every pack_len tokens, so {', '.join(given)} "
                                  "would be ignored: drop " + ", ".join(f"--{g.replace('_', '-')}" for g in given) +
                                  " (wrapped needs --overlong split, the text default)")
        if self.time_limit is not None and self.algorithm != "ortools":
            raise ConfigError(f"time_limit applies to the ortools planner only; {self.algorithm} would ignore it: "
                              "drop it (--time-limit) or choose --algorithm ortools")


def _attention_terms(terms) -> tuple[tuple[float, int | None], ...]:
    """even_attention checked: pairs of (weight > 0, window: a whole number >= 1 or None)."""
    out = []
    for t in terms:
        if not isinstance(t, (tuple, list)) or len(t) != 2:
            raise ConfigError(f"even_attention holds (weight, window) pairs; got {t!r}")
        weight, window = t
        number("even_attention weight", weight, 0, 1e300, above=True)
        if window is not None:
            whole("even_attention window", window, 1, 1 << 40)
        out.append((float(weight), None if window is None else int(window)))
    return tuple(out)


@dataclass(frozen=True)
class WriteConfig:
    """Stage 3: how packs are laid out in shard files."""

    shard_bytes: int = 256 * 2**20
    """Upper bound on a shard file's size, kept exactly; only a single pack too large for it alone gets
    a shard of its own that exceeds it."""
    shuffle: bool = True
    """Write packs in a seeded random order, so that a sequential reader sees a mix."""
    seed: int = 0

    def __post_init__(self) -> None:
        whole("shard_bytes (--shard-mb)", self.shard_bytes, 1, MAX_SHARD_BYTES)
        whole("seed (--seed)", self.seed, 0, MAX_SEED)


def to_dict(cfg: object) -> dict:
    """A config as plain JSON-able data: the fields that decide the output (its lineage). Fields marked
    metadata={"lineage": False} (how a stage runs, never what it writes) are left out, so manifests and
    digests do not depend on them."""
    runtime = {f.name for f in dataclasses.fields(cfg) if not f.metadata.get("lineage", True)}  # type: ignore[arg-type]
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in runtime}  # type: ignore[arg-type]


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
    "default_overlong", "configs_from_options", "KINDS", "OVERLONG", "LAYOUTS",
]
