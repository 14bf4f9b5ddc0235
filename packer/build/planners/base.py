"""What every planner shares: a packing is (order, offsets) over item indices.

    order    int64 [n]       item indices, pack by pack, in the order they were placed
    offsets  int64 [P + 1]   pack p holds items order[offsets[p]:offsets[p+1]]

Packs are numbered in the order they were opened.
"""

from __future__ import annotations

import numpy as np

Packing = tuple[np.ndarray, np.ndarray]
