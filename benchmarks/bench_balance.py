"""Compute-balanced steps: how unequal are the ranks' per-step costs under token balance vs compute balance?
(goal: max/mean per-step cost at most 1.02 on the Arena-Hard slice at pack length 8192 with 4 ranks)

The cost of a pack is its training FLOPs under packer.core.cost.cost_model for a Llama-3.1-8B-shaped config
(a x tokens + b x sum of L^2 / 2); the same packs are dealt by tokens (balance="tokens") and by that cost
(balance="compute"). Printed: per-step max/mean of the ranks' costs, averaged over the epoch and its worst step,
for a few batch sizes, and the same with the epoch's order grouped by cost (group_by_cost); then the same data
planned with --even tokens and --even compute (the plan swaps examples between packs so every pack's work is near
the mean; bfd leaves a last pack with a third of the others' tokens here). Deterministic (no timing): one run is
the figure.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import packer
from packer.core import config as C
from packer.core.cost import cost_model
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
    data = [f"{arena}#query=prompt,response=response"]

    def run(name: str, **plan) -> Path:
        out = tmp / name
        packer.pack(data, out, tokenizer=str(SHARED / "llama3"),
                    plan_config=C.PlanConfig(pack_len=8192, algorithm="bfd", **plan))
        return out

    plain = run("plain")
    n = json.loads((plain / "shards" / "manifest.json").read_text())["counts"]["packs"]
    print(f"\n## per-step cost balance, Arena-Hard slice ({n} packs of 8192, Llama 3 ids), 4 ranks: max/mean per step, "
          "mean over the epoch (worst step)")
    print(f"{'model':>7} {'packs/rank':>10} | {'as planned: tokens':>18} {'compute':>16} {'best split':>10} "
          f"{'grouped':>16} | {'--even tokens':>16} {'--even compute':>16}")
    tokens_even = run("even-tokens", even="tokens")
    for name, cfg in (("8B", LLAMA_8B), ("1B-ish", SMALL)):
        model = cost_model(cfg)
        compute_even = run(f"even-compute-{name}", even="compute", even_attention=model.relative())
        for b in (1, 2, 4):
            by_tokens = PackedLoader(plain, b, world_size=4, seed=0)
            by_compute = PackedLoader(plain, b, world_size=4, seed=0, balance="compute", cost=model)
            grouped = PackedLoader(plain, b, world_size=4, seed=0, balance="compute", cost=model, group_by_cost=GROUP)
            true = pack_costs(by_tokens.dataset, model)
            plan = by_compute._plan()
            cells = [imbalance(true, by_tokens._plan()), imbalance(true, plan), imbalance(true, grouped._plan())]
            for evened in (tokens_even, compute_even):
                ld = PackedLoader(evened, b, world_size=4, seed=0, balance="compute", cost=model)
                cells.append(imbalance(pack_costs(ld.dataset, model), ld._plan()))
            steps = [np.sort(plan[:, k, :].reshape(-1)) for k in range(plan.shape[1])]
            best = np.mean([best_split(true[s].tolist(), 4, b) for s in steps]) if b <= 4 else float("nan")
            f = [f"{1 + c['step_mean']:.4f} ({1 + c['step_max']:.4f})" for c in cells]
            print(f"{name:>7} {b:>10} | {f[0]:>18} {f[1]:>16} {best:10.4f} {f[2]:>16} | {f[3]:>16} {f[4]:>16}")
    print("goal: compute-balanced max/mean per step <= 1.02 (mean over the epoch's steps). 'as planned': bfd's packs, "
          "dealt by tokens, by compute, and by compute with the epoch's order grouped by cost in windows of "
          f"{GROUP} packs (group_by_cost); 'best split' is the lowest any dealing of each step's packs allows "
          "(exhaustive search). '--even': the same data planned with the packs' tokens or compute evened, dealt by "
          "compute, ungrouped.")


if __name__ == "__main__":
    main()
