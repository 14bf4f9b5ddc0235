"""Compute-balanced steps: how unequal are the ranks' per-step costs under token balance vs compute balance?
(goal: max/mean per-step cost at most 1.02 on the Arena-Hard slice at pack length 8192 with 4 ranks)

The cost of a pack is its training FLOPs under packer.train.cost.cost_model for a Llama-3.1-8B-shaped config
(a x tokens + b x sum of L^2 / 2); the same packs are dealt by tokens (balance="tokens") and by that cost
(balance="compute"). Printed: per-step max/mean of the ranks' costs, averaged over the epoch and its worst step,
for a few batch sizes, and the same with the epoch's order grouped by cost (group_by_cost). Deterministic (no timing): one run is the figure.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import packer
from packer.core import config as C
from packer.train.cost import cost_model
import numpy as np

from packer.train.loader import PackedLoader, imbalance, pack_costs

GROUP = 32  # group_by_cost window for the grouped columns
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256}
SMALL = {"hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 8,
         "intermediate_size": 2816, "vocab_size": 128256}


def best_split(c: list[float], world: int, b: int) -> float:
    """The lowest max/mean any split of one step's packs (b per rank) allows: exhaustive, with pruning."""
    import itertools

    top = [float("inf")]

    def rec(rest: list[int], loads: list[float]) -> None:
        if not rest:
            top[0] = min(top[0], max(loads))
            return
        for comb in itertools.combinations(rest[1:], b - 1):
            g = (rest[0], *comb)
            load = sum(c[i] for i in g)
            if max(loads + [load]) < top[0]:
                rec([i for i in rest if i not in g], loads + [load])

    rec(list(range(len(c))), [])
    return top[0] / (sum(c) / world)


def main() -> None:
    arena = SHARED / "arena_hard_slice" / "answers_gpt-4-0314.jsonl"
    if not arena.is_file() or not (SHARED / "llama3").is_dir():
        print("skipped: ../shared/data is absent")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-balance-"))
    run = tmp / "run"
    packer.pack([f"{arena}#query=prompt,response=response"], run, tokenizer=str(SHARED / "llama3"),
                plan_config=C.PlanConfig(pack_len=8192, algorithm="bfd"))
    n = json.loads((run / "shards" / "manifest.json").read_text())["counts"]["packs"]
    print(f"\n## per-step cost balance, Arena-Hard slice ({n} packs of 8192, Llama 3 ids), 4 ranks")
    print(f"{'model':>10} {'packs/rank':>10} {'tokens: mean':>13} {'worst':>7} {'compute: mean':>14} {'worst':>7} "
          f"{'best split: mean':>17} {'grouped: mean':>14} {'worst':>7}")
    for name, cfg in (("8B", LLAMA_8B), ("1B-ish", SMALL)):
        model = cost_model(cfg)
        for b in (1, 2, 4):
            by_tokens = PackedLoader(run, b, world_size=4, seed=0)
            by_compute = PackedLoader(run, b, world_size=4, seed=0, balance="compute", cost=model)
            grouped = PackedLoader(run, b, world_size=4, seed=0, balance="compute", cost=model, group_by_cost=GROUP)
            true = pack_costs(by_tokens.dataset, model)
            plan = by_compute._plan()
            t, c, g = imbalance(true, by_tokens._plan()), imbalance(true, plan), imbalance(true, grouped._plan())
            steps = [np.sort(plan[:, k, :].reshape(-1)) for k in range(plan.shape[1])]
            best = np.mean([best_split(true[s].tolist(), 4, b) for s in steps]) if b <= 4 else float("nan")
            print(f"{name:>10} {b:>10} {1 + t['step_mean']:13.4f} {1 + t['step_max']:7.4f} "
                  f"{1 + c['step_mean']:14.4f} {1 + c['step_max']:7.4f} {best:17.4f} {1 + g['step_mean']:14.4f} "
                  f"{1 + g['step_max']:7.4f}")
    print("goal: compute-balanced max/mean per step <= 1.02 (mean over the epoch's steps); 'best split' is the lowest "
          "any dealing of each step's packs allows (exhaustive search): below it, only other packs or steps help; "
          f"'grouped' deals by compute with the epoch's order grouped by cost in windows of {GROUP} packs "
          "(group_by_cost), so each step's packs cost alike")


if __name__ == "__main__":
    main()
