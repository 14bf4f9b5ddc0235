"""A small synthetic sft data set (arithmetic word problems), made in code so `make pack` needs no data."""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia"]
THINGS = ["apples", "marbles", "books", "stamps", "pencils", "shells", "coins", "cards"]


def record(rng: random.Random) -> dict[str, str]:
    """One problem whose worked answer has 1-40 steps, so lengths spread from ~150 to ~2,500 bytes."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    total = rng.randint(2, 90)
    steps = max(1, int(rng.lognormvariate(1.2, 0.9)))
    steps = min(steps, 40)
    lines, query = [], [f"{name} has {total} {thing}."]
    for _ in range(steps):
        k = rng.randint(1, 30)
        if rng.random() < 0.5:
            query.append(f"Then {name} gets {k} more.")
            lines.append(f"{name} gets {k} more, so {total} + {k} = {total + k} {thing}.")
            total += k
        else:
            k = min(k, total)
            query.append(f"Then {name} gives away {k}.")
            lines.append(f"{name} gives away {k}, so {total} - {k} = {total - k} {thing}.")
            total -= k
    query.append(f"How many {thing} does {name} have now?")
    lines.append(f"#### {total}")
    return {"query": " ".join(query), "response": "\n".join(lines)}


def write_sample(path: str | Path, n: int = 2000, seed: int = 0) -> Path:
    """Write `n` records as JSON Lines (fields query, response); same seed, same bytes."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(record(rng)) + "\n")
    tmp.replace(path)
    return path
