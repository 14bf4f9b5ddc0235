"""tokenizers: Hugging Face's Rust tokenizer, the reference every other backend must equal id for id.

Trade-off: every tokenizer.json loads (BPE, WordPiece, Unigram; ByteLevel and Metaspace), and it gives
character offsets (the joined-text path of SentencePiece-style tokenizers needs them); an Encoding
object per text, from which the ids are copied out one Python int at a time.
"""

from __future__ import annotations

from itertools import chain

import numpy as np

ENCODE_BATCH = 1024  # texts per call: enough for its thread pool, ~20 MB of Encoding objects a call


def version() -> str:
    import tokenizers

    return tokenizers.__version__


class Encoder:
    def __init__(self, tokenizer):
        self.tok = tokenizer  # a tokenizers.Tokenizer (TokenizerInfo.build())

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids and per-text lengths. Encoding objects hold ~100 bytes a token (ids, offsets, masks): texts
        are encoded ENCODE_BATCH at a time and only their ids kept, so the peak is one sub-batch of them."""
        ids_parts, len_parts = [np.zeros(0, np.uint32)], [np.zeros(0, np.int64)]
        for a in range(0, len(texts), ENCODE_BATCH):
            encodings = self.tok.encode_batch_fast(texts[a:a + ENCODE_BATCH], add_special_tokens=False)
            lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
            # Streaming the ids straight into one array is ~2x faster than materializing per-text lists.
            ids_parts.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.uint32,
                                         count=int(lengths.sum())))
            len_parts.append(lengths)
            del encodings
        return np.concatenate(ids_parts), np.concatenate(len_parts)


def load(json_text: str) -> Encoder:
    from packer.build.load_tokenizer import _build

    return Encoder(_build(json_text))
