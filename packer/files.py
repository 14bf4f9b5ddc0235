"""`packed_dataset_from_files`: raw JSON Lines files in, a packed dataset out, cached between runs.

The run folder is named by the digest of the inputs' bytes, the tokenizer and every setting, under
`cache_dir`, and each stage skips itself when up to date, so a second call only memory-maps. In a
multi-process launch (torchrun), rank 0 builds while the other ranks wait, then every rank maps it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from packer import config as C
from packer.dataset import PackedShards
from packer.errors import PackerError
from packer.executors import Executor
from packer.manifest import MANIFEST
from packer.pipeline import pack, with_weights
from packer.storage import expand, identity
from packer.tokenizer import TokenizerInfo, load_tokenizer


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # torch is a dependency; this only guards odd builds
        pass
    return int(os.environ.get("RANK", "0"))


def _barrier() -> bool:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            return True
    except ImportError:
        pass
    return False


def packed_dataset_from_files(files: Sequence[str | C.InputSpec], tokenizer: str | TokenizerInfo, pack_len: int, *,
                              cache_dir: str | Path = "~/.cache/packer", label_mode: str = "unshifted",
                              executor: Executor | None = None, workers: int = 0, wait_seconds: float = 3600,
                              **options) -> PackedShards:
    """Pack input files (JSON Lines, Parquet, Arrow, globs or URLs; each may name its own fields and weight:
    "a.jsonl#query=question,response=answer,weight=0.5")
    and return the memory-mapped packs. Rank 0 builds; other ranks wait for the manifest, then map.

    options: any field of TokenizeConfig, PlanConfig or WriteConfig by name (kind, template,
    query_field, eos_token, skip_bad, algorithm, overlong, seed, max_segments, time_limit, shuffle,
    shard_bytes, ...), the names `packer pack` and `pack_dataset` take too; an unknown name is an
    error. overlong defaults by kind (split for text, truncate otherwise).
    """
    specs = [f if isinstance(f, C.InputSpec) else C.InputSpec.parse(f) for f in files]
    options = {"pack_len": pack_len, **options}
    options.setdefault("overlong", C.default_overlong(options.get("kind", C.TokenizeConfig.kind)))
    tcfg, pcfg, wcfg = C.configs_from_options("packed_dataset_from_files", options, C.TokenizeConfig,
                                              C.PlanConfig, C.WriteConfig)
    info = tokenizer if isinstance(tokenizer, TokenizerInfo) else load_tokenizer(tokenizer, tcfg.eos_token,
                                                                                 tcfg.add_bos)
    pcfg = with_weights(pcfg, specs)
    key = C.digest({"inputs": [[C.to_dict(s), [identity(f) for f in expand(s.path)]] for s in specs],
                    "tokenizer": info.fingerprint,
                    "tokenize": C.to_dict(tcfg), "plan": C.to_dict(pcfg), "write": C.to_dict(wcfg)})
    run = Path(cache_dir).expanduser() / key[:16]
    if _rank() == 0:
        pack(specs, run, tokenizer=info, tokenize_config=tcfg, plan_config=pcfg, write_config=wcfg, executor=executor,
             workers=workers)
        _barrier()
    elif not _barrier():  # no process group: wait for rank 0's commit point, the shards manifest
        deadline = time.monotonic() + wait_seconds
        while not (run / "shards" / MANIFEST).is_file() or not (run / "report.json").is_file():
            if time.monotonic() > deadline:
                raise PackerError(f"{run}: rank 0 did not finish packing within {wait_seconds:.0f} s; "
                                  "check its log, or raise wait_seconds")
            time.sleep(0.5)
    return PackedShards(run, label_mode=label_mode)
