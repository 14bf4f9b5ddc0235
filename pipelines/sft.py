"""SFT recipe: {query, response} records, Alpaca prompt, loss on the response, truncate over-long.

    python pipelines/sft.py train.jsonl --out runs/sft --tokenizer path/to/tokenizer.json --pack-len 2048
"""

from __future__ import annotations

from packer.core import config as C
from pipelines._common import arguments, run_stages


def main() -> None:
    ap = arguments(__doc__.splitlines()[0])
    ap.add_argument("--template", default="alpaca")
    a = ap.parse_args()
    run_stages(a.data, a.out, a.tokenizer, C.TokenizeConfig(kind="sft", template=a.template),
               C.PlanConfig(pack_len=a.pack_len, algorithm=a.algorithm, overlong="truncate"), workers=a.workers)


if __name__ == "__main__":
    main()
