"""`packed_dataset_from_files`: input files in, a packed dataset out, cached between runs.

The run folder is named by the digest of the inputs' identities, the tokenizer and every setting,
under `cache_dir` (default: the user's cache, CACHE/files: see packer.core.cache), and each stage skips itself when up to date, so a second call only memory-maps. In
a multi-process launch (torchrun), LOCAL_RANK 0 on each node builds under a lock file while the other
processes wait on the commit file (packer.core.buildlock), never inside a collective, then every rank maps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from packer.core import config as C
from packer.train.reader import PackedShards
from packer.core.buildlock import build_once
from packer.core.executors import Executor
from packer.core.manifest import MANIFEST
from packer.pipeline import pack, with_weights
from packer.core.cache import touch
from packer.core.cache import cache_dir as user_cache
from packer.core.storage import expand, identity
from packer.build.load_tokenizer import TokenizerInfo, load_tokenizer


def packed_dataset_from_files(files: Sequence[str | C.InputSpec], tokenizer: str | TokenizerInfo, pack_len: int, *,
                              cache_dir: str | Path | None = None, label_mode: str = "unshifted",
                              executor: Executor | str | None = None, workers: int = 0, wait_seconds: float = 3600,
                              **options) -> PackedShards:
    """Pack input files (JSON Lines, Parquet, Arrow, globs or URLs; each may name its own fields and weight:
    "a.jsonl#query=question,response=answer,weight=0.5")
    and return the memory-mapped packs. LOCAL_RANK 0 builds; other processes wait for the commit (up to
    wait_seconds, with a progress line), then map.

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
    run = (Path(cache_dir).expanduser() if cache_dir is not None else user_cache() / "files") / key[:16]

    def build() -> None:
        pack(specs, run, tokenizer=info, tokenize_config=tcfg, plan_config=pcfg, write_config=wcfg, executor=executor,
             workers=workers)

    # The commit point is the shards' manifest plus the report, the last files pack writes.
    build_once(run, build, lambda: (run / "shards" / MANIFEST).is_file() and (run / "report.json").is_file(),
               timeout=wait_seconds)
    touch(run)  # its last use, for `packer cache prune`
    return PackedShards(run, label_mode=label_mode)
