"""Chat recipe: OpenAI messages or ShareGPT conversations (tool calls, tools, reasoning), the tokenizer's
chat template (else ChatML), loss on assistant turns only, truncate over-long.

    python pipelines/chat.py chats.jsonl --out runs/chat --tokenizer path/to/tokenizer_folder --pack-len 4096
"""

from __future__ import annotations

from packer.core import config as C
from pipelines._common import arguments, run_stages


def main() -> None:
    a = arguments(__doc__.splitlines()[0]).parse_args()
    run_stages(a.data, a.out, a.tokenizer, C.TokenizeConfig(kind="chat", template="auto"),
               C.PlanConfig(pack_len=a.pack_len, algorithm=a.algorithm, overlong="truncate"), workers=a.workers)


if __name__ == "__main__":
    main()
