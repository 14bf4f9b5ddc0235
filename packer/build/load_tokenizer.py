"""Finding and describing a tokenizer: a tokenizer.json, a Hugging Face folder, a hub name, or `byte`.

`byte` is a byte-level tokenizer built in code (256 byte tokens + <|endoftext|>): it needs no
download, so the sample run and the tests work on any machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from packer.core.errors import ConfigError

BYTE_EOS = "<|endoftext|>"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class TokenizerInfo:
    """What the pipeline needs of a tokenizer, serializable so worker processes can rebuild it."""

    name: str
    json: str
    """The tokenizer in tokenizers' JSON form (Tokenizer.to_str())."""
    fingerprint: str
    """sha256 of `json`: identifies the vocabulary and rules in every manifest."""
    vocab_size: int
    """Ids are in [0, vocab_size); decides uint16 vs uint32 tokens on disk."""
    eos_id: int
    bos_id: int | None
    add_bos: bool
    chat_template: str | dict[str, str] | None
    """The chat template, or several by name (as transformers holds them: 'default', 'tool_use', ...)."""
    special: dict[str, str]
    """Special token strings the chat template sees, as transformers passes them (bos_token, eos_token,
    unk_token, sep_token, pad_token, cls_token, mask_token: those the tokenizer defines)."""
    spans_concatenate: bool = True
    """Whether encoding text spans one by one and concatenating the ids gives back the joined text.
    True for byte-level BPE (GPT-2, Llama 3, Qwen2); False where each encode adds a prefix space
    (SentencePiece-style Metaspace), in which case whole examples are encoded and the loss mask
    comes from character offsets."""

    def build(self) -> Tokenizer:
        return _build(self.json)


@lru_cache(maxsize=4)
def _build(text: str) -> Tokenizer:
    return Tokenizer.from_str(text)


def byte_tokenizer() -> Tokenizer:
    """Byte-level BPE with no merges: every UTF-8 byte is one token (ids 0-255), EOS is 256."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: _byte_of(c)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BYTE_EOS])
    return tok


def _byte_of(ch: str) -> int:
    """The byte a ByteLevel alphabet character stands for (GPT-2's printable byte mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    if ord(ch) in printable:
        return ord(ch)
    extra = [b for b in range(256) if b not in printable]
    return extra[ord(ch) - 256]


def _token_str(value: object) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(spec: str, eos_token: str | None = None, add_bos: bool | None = None) -> TokenizerInfo:
    """Resolve `spec` (byte | path to tokenizer.json | folder holding one | hub name) to a TokenizerInfo."""
    cfg: dict = {}
    if spec == "byte":
        tok, name = byte_tokenizer(), "byte"
        cfg = {"eos_token": BYTE_EOS}
    else:
        p = Path(spec)
        if p.is_dir():
            p = p / "tokenizer.json"
            if not p.is_file():
                raise ConfigError(f"{spec}: folder has no tokenizer.json; pass the tokenizer.json path")
        if p.is_file():
            try:
                tok = Tokenizer.from_file(str(p))
            except Exception as e:  # tokenizers raises a bare Exception on bad JSON
                raise ConfigError(f"{p}: not a tokenizers JSON file ({e})") from None
            conf = p.parent / "tokenizer_config.json"
            if conf.is_file():
                cfg = json.loads(conf.read_text(encoding="utf-8"))
            files = _template_files(p.parent)
            if files:  # as transformers: template files take priority over tokenizer_config.json's entry
                cfg["chat_template"] = files
            name = str(p)
        else:
            tok, cfg = _from_hub(spec)
            name = spec
    eos = eos_token or _token_str(cfg.get("eos_token"))
    if eos is None:
        raise ConfigError(f"tokenizer '{spec}': no eos_token in tokenizer_config.json; pass --eos-token")
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        raise ConfigError(f"tokenizer '{spec}': EOS token {eos!r} is not in the vocabulary; pass --eos-token")
    bos = _token_str(cfg.get("bos_token"))
    bos_id = tok.token_to_id(bos) if bos else None
    want_bos = bool(cfg.get("add_bos_token", False)) if add_bos is None else add_bos
    if want_bos and bos_id is None:
        raise ConfigError(f"tokenizer '{spec}': BOS requested but no bos_token is defined")
    text = tok.to_str()
    special = {k: v for k in SPECIAL_TOKENS if (v := _token_str(cfg.get(k)))}
    special.update(eos_token=eos, bos_token=bos or "")
    clean = spans_concatenate(tok)
    return TokenizerInfo(
        name=name, json=text, fingerprint=hashlib.sha256(text.encode()).hexdigest(),
        vocab_size=tok.get_vocab_size(with_added_tokens=True), eos_id=eos_id, bos_id=bos_id,
        add_bos=want_bos, chat_template=_chat_template(cfg.get("chat_template")), special=special,
        spans_concatenate=clean,
    )


PROBES = [("Hello", " world"), ("Question: 2+2?\n\n### Response:\n", "4 apples"), ("a", "b"), ("x ", "y")]


def spans_concatenate(tok: Tokenizer) -> bool:
    """Probe whether ids(a) + ids(b) decodes to a + b, so spans can be encoded separately."""
    for a, b in PROBES:
        ids = tok.encode(a, add_special_tokens=False).ids + tok.encode(b, add_special_tokens=False).ids
        if tok.decode(ids, skip_special_tokens=False) != a + b:
            return False
    return True


def _template_files(folder: Path) -> dict[str, str] | str | None:
    """chat_template.jinja ('default') and additional_chat_templates/NAME.jinja of a tokenizer folder, as
    transformers reads them (one default template alone is a string)."""
    found = {}
    if (folder / "chat_template.jinja").is_file():
        found["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        for f in sorted(extra.glob("*.jinja")):
            found[f.name.removesuffix(".jinja")] = f.read_text(encoding="utf-8")
    if not found:
        return None
    return found["default"] if list(found) == ["default"] else found


def _chat_template(value: object) -> str | dict[str, str] | None:
    """tokenizer_config.json's chat_template: a string, or a list of {name, template} (a dict by name)."""
    if isinstance(value, list):  # several named templates
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        named = {k: v for k, v in named.items() if isinstance(k, str) and isinstance(v, str)}
        return named or None
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)} or None
    return value if isinstance(value, str) else None


def _from_hub(name: str) -> tuple[Tokenizer, dict]:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            f"tokenizer '{name}' is not a file or folder; to load it by name install the extra "
            "`pip install packer[hf]`, or pass a tokenizer.json path"
        ) from None
    try:
        hf = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # offline, unknown name, gated model ...
        raise ConfigError(
            f"tokenizer '{name}' could not be loaded from the hub ({type(e).__name__}); "
            "offline, pass a tokenizer.json path or a folder holding one"
        ) from None
    cfg = {"eos_token": hf.eos_token, "bos_token": hf.bos_token,
           "add_bos_token": getattr(hf, "add_bos_token", False), "chat_template": hf.chat_template}
    return hf.backend_tokenizer, cfg
