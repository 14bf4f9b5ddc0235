"""Encoders: the tokenizer backends the tokenize stage encodes text spans with, one module each.

    tokenizers   reference.py   Hugging Face tokenizers: the reference, loads everything, has offsets
    fast         fast.py        fastokens: 4-46x faster, ids only, checked against the reference

`--tokenizer-backend auto|fast|tokenizers` (TokenizeConfig.tokenizer_backend). tokenizers is the
reference: whichever backend runs, every id equals what tokenizers gives, so shards and manifests are
byte-identical (the backend is stated in the terminal summary and report.json, never in a manifest).
The fast backend is used only behind a gate:

- at load, it must encode a built-in corpus of hard strings (every Unicode script and category the
  tokenizers' pre-tokenizers treat apart, whitespace runs, digits, code, emoji, very long words, the
  tokenizer's own special tokens) exactly as tokenizers does (`choose`);
- during the run, a deterministic sample of every chunk's spans, seeded by the chunk (its first 64 and
  1% of the rest; `check_tokens="all"`: every span), is encoded by tokenizers too and compared (`check`);
- a mismatch under auto re-encodes the whole run with tokenizers and says so, with the first differing
  record and both id sequences; under fast it is an error saying the same. auto also takes tokenizers,
  saying why, where fastokens is not installed, cannot load the tokenizer or needs offsets.

A new backend is one module with `load(json) -> Encoder`, `version()` and a docstring stating its
trade-off, and one line in ENCODERS.
"""

from __future__ import annotations

import hashlib

import numpy as np

from packer.build.encoders import fast, reference
from packer.build.encoders.base import Choice, Encoder
from packer.core.errors import ConfigError, PackerError
from packer.core.ranges import concat_ranges

ENCODERS = {"tokenizers": reference, "fast": fast}
BACKENDS = ("auto", "fast", "tokenizers")
CHECKS = ("sample", "all")
SAMPLE_FIRST, SAMPLE_SHARE = 64, 0.01
"""The run-time gate's sample of a chunk: its first 64 spans and 1% of the rest (at least one)."""


class TokenMismatch(PackerError):
    """The fast backend's ids for a span differ from tokenizers' (the run-time gate)."""

    def __init__(self, where: str, text: str, fast_ids: list[int], reference_ids: list[int]):
        self.where, self.text, self.fast_ids, self.reference_ids = where, text, fast_ids, reference_ids
        super().__init__(f"{where}: the fast tokenizer backend gives {_short(fast_ids)} where tokenizers gives "
                         f"{_short(reference_ids)} for the span {text[:80]!r}")

    def __reduce__(self):  # keeps the fields when the error crosses a process boundary
        return (type(self), (self.where, self.text, self.fast_ids, self.reference_ids))


def _short(ids: list[int]) -> str:
    return str(ids) if len(ids) <= 24 else f"{ids[:24]}... ({len(ids)} ids)"


_LOADED: dict[tuple[str, str], Encoder] = {}  # this process's encoders, by (backend, tokenizer.json text)


def load(backend: str, json_text: str) -> Encoder:
    """The `backend` encoder of a tokenizer.json, built once per process (building fastokens' Llama 3 takes
    ~2 s): the driver's gate and an in-process worker share it. One tokenizer is held at a time. Keyed by the
    text itself: Python keeps a str's hash, so a lookup per batch costs nothing (a sha256 of it did)."""
    key = (backend, json_text)
    if key not in _LOADED:
        if any(k[1] != json_text for k in _LOADED):
            _LOADED.clear()
        _LOADED[key] = ENCODERS[backend].load(json_text)
    return _LOADED[key]


def release() -> None:
    """Drop this process's encoders and give their memory back (a stage done with them): the plan and write
    stages after tokenization then run without the two encoders and the heap their batches grew (measured
    on 200k GSM8K-like records with GPT-2: -65 MB). A later load builds them again."""
    import gc

    from packer.core.executors.local import trim_heap

    _LOADED.clear()
    gc.collect()
    trim_heap()


def hard_strings(added_tokens: list[str]) -> list[str]:
    """The load-time gate's corpus: strings where byte-level BPE implementations have differed."""
    scripts = ["Hello", "naïve café", "Ωμέγα", "Привет мир", "مرحبا بالعالم", "שלום", "नमस्ते दुनिया", "สวัสดี",
               "你好世界", "こんにちは世界", "カタカナ", "안녕하세요", "Ελληνικά", "ქართული", "Հայերեն", "ትግርኛ",
               "👋🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "e\u0301", "a\u0308\u0323", "ﬁ", "ǅ", "ℌ", "①②", "½", "²³",
               "∑∫√∞≠≤", "→⇒", "─┼┤", "\ue000\uf8ff", "\u00a0nbsp", "zero\u200bwidth", "j\u200doin", "\ufeffBOM",
               "line\u2028sep\u2029para", "soft\u00adhyphen", "\u202eRTL\u202c", "NUL\x00byte", "ctl\x01\x1f\x7f\x1b[0m",
               "İstanbul", "ß ẞ", "Ǆ", "ﬀ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚", "\U0001f600\U0001f64f", "°C", "№", "₹€$¥£"]
    spaces = [" " * n for n in range(1, 17)] + ["\t", "\t\t", "\n", "\n\n", "\n\n\n\n", "\r\n", " \n ", "\t \n",
                                                 "  \t  \n\n  ", "\u3000", "\u2003\u2009"]
    digits = ["0", "7", "42", "1234567890", "3.14159", "1,000,000", "1e-5", "0x1F", "-12.5%", "2026-12-05",
              "12:34:56", "$1,234.56", "1/2", "007", "9" * 40, "1 2 3", "½ + ¼"]
    code = ["def f(x):\n    return x**2  # square\n", "for (int i = 0; i < n; ++i) { a[i] = b[i]; }",
            '{"key": [1, 2.0, null, true], "k2": {"x": "y"}}', "<div class=\"a\">&amp;</div>",
            r"^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)$", r"\frac{a}{b} + \sum_{i=1}^{n} x_i^2", "SELECT * FROM t WHERE x='y';",
            "    indented\n\tand tabbed", "if x:\n\n\n    pass", "a->b::c<d>", "x:=y|>z", "#include <stdio.h>"]
    words = ["don't", "I'm", "they'll", "we've", "it's", "'s", "O'Neil", "rock'n'roll", "e.g.", "U.S.A.",
             "a" * 1000, "supercalifragilisticexpialidocious" * 30, "Ab" * 700, "x" * 5000 + " y",
             "".join(chr(0x4e00 + (i * 37) % 2000) for i in range(800)), "🙂" * 300, "ALLCAPS WORDS", "camelCaseWord",
             "snake_case_word", "kebab-case-word", "https://example.com/a?b=c&d=e#f", "user@example.com"]
    out = []
    for s in scripts + spaces + digits + code + words:
        out += [s, " " + s, s + " ", "x" + s + "y", s + s]
    for t in added_tokens:  # the tokenizer's own special and added tokens, alone and among text
        out += [t, " " + t, t + t, "a" + t + "b", "Hello " + t + " world", t + "\n", "\n" + t]
    out += ["".join(scripts), " ".join(scripts + digits), "".join(spaces) + "".join(words[:8])]
    return out


def _added_tokens(json_text: str) -> list[str]:
    import json

    try:
        return [t["content"] for t in json.loads(json_text).get("added_tokens", []) if isinstance(t.get("content"), str)]
    except (ValueError, AttributeError, TypeError):
        return []


def first_difference(texts: list[str], a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
                     ) -> int | None:
    """The index of the first text whose ids differ between two encodings ((ids, lengths) each), or None."""
    (ids_a, len_a), (ids_b, len_b) = a, b
    if np.array_equal(len_a, len_b) and np.array_equal(ids_a, ids_b):
        return None
    starts_a, starts_b = np.cumsum(len_a) - len_a, np.cumsum(len_b) - len_b
    for i in range(len(texts)):  # only after a difference was found: find which text
        if not np.array_equal(ids_a[starts_a[i]:starts_a[i] + len_a[i]], ids_b[starts_b[i]:starts_b[i] + len_b[i]]):
            return i
    return None


def choose(json_text: str, spans_concatenate: bool, backend: str) -> Choice:
    """The backend a run uses, by the load-time gate (see the module docstring). backend='fast' refuses,
    naming the reason, where auto would take tokenizers."""
    if backend not in BACKENDS:
        raise ConfigError(f"tokenizer_backend '{backend}' is not one of {', '.join(BACKENDS)}")
    ref = Choice("tokenizers", reference.version(), "asked for (--tokenizer-backend tokenizers)")
    if backend == "tokenizers":
        return ref
    why = None
    if not spans_concatenate:
        why = ("this tokenizer's spans do not concatenate (a SentencePiece-style Metaspace): its loss mask needs "
               "character offsets, which the fast backend does not give")
    else:
        try:
            encoder = load("fast", json_text)
        except ImportError:
            why = "fastokens is not installed (pip install fastokens)"
        except Exception as e:  # fastokens raises on what it does not implement, naming it
            why = f"fastokens cannot load this tokenizer ({str(e).strip().splitlines()[0][:160] or type(e).__name__})"
    if why is None:
        texts = hard_strings(_added_tokens(json_text))
        ref_encoder = load("tokenizers", json_text)
        at = first_difference(texts, encoder.encode(texts), ref_encoder.encode(texts))
        if at is None:
            return Choice("fast", fast.version(), f"fastokens {fast.version()} loads this tokenizer and encodes the "
                                                  f"{len(texts)} built-in hard strings exactly as tokenizers does")
        (a, _), (b, _) = encoder.encode([texts[at]]), ref_encoder.encode([texts[at]])
        why = f"the fast backend differs from tokenizers on the hard string {texts[at][:60]!r}: {_short(a.tolist())} " \
              f"vs {_short(b.tolist())}"
    if backend == "fast":
        raise ConfigError(f"--tokenizer-backend fast: {why}; use --tokenizer-backend auto (or tokenizers)")
    return Choice("tokenizers", ref.version, f"auto: {why}")


def sample(n: int, seed: str, check: str) -> np.ndarray:
    """The spans of a batch the run-time gate re-encodes with tokenizers: all of them (check 'all'), else the
    first SAMPLE_FIRST and SAMPLE_SHARE of the rest, drawn with a generator seeded by `seed` (the chunk's
    identity), so a rerun checks the same spans."""
    if check == "all" or n <= SAMPLE_FIRST:
        return np.arange(n)
    rest = n - SAMPLE_FIRST
    k = max(1, int(np.ceil(rest * SAMPLE_SHARE)))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    return np.concatenate([np.arange(SAMPLE_FIRST), SAMPLE_FIRST + np.sort(rng.choice(rest, k, replace=False))])


def check(texts: list[str], encoded: tuple[np.ndarray, np.ndarray], ref: Encoder, picked: np.ndarray
          ) -> int | None:
    """Re-encode texts[picked] with the reference and compare with `encoded` (ids, lengths of all texts);
    returns the index (into texts) of the first differing span, or None."""
    ids, lengths = encoded
    starts = np.cumsum(lengths) - lengths
    mine = (ids[concat_ranges(starts[picked], lengths[picked])], lengths[picked])
    at = first_difference([texts[i] for i in picked], mine, ref.encode([texts[i] for i in picked]))
    return None if at is None else int(picked[at])


__all__ = ["BACKENDS", "CHECKS", "ENCODERS", "Choice", "Encoder", "TokenMismatch", "check", "choose",
           "first_difference", "hard_strings", "load", "sample"]
