"""Pretraining recipe: {text} documents, loss on every token, over-long documents split into pieces.

    python pipelines/text.py docs.jsonl.zst --out runs/text --tokenizer path/to/tokenizer.json --pack-len 4096
"""

from __future__ import annotations

from packer.core import config as C
from pipelines._common import arguments, run_stages


def main() -> None:
    a = arguments(__doc__.splitlines()[0]).parse_args()
    run_stages(a.data, a.out, a.tokenizer, C.TokenizeConfig(kind="text"),
               C.PlanConfig(pack_len=a.pack_len, algorithm=a.algorithm, overlong="split"), workers=a.workers)


if __name__ == "__main__":
    main()
