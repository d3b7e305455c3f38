"""Best-fit decreasing: put items of integer sizes into the fewest bins of a fixed capacity, deterministically.

    sort the items by size, largest first (ties: input order)
    for each item: put it in the fullest bin it still fits in (ties: the bin opened first),
                   or open a new bin when it fits in none

Like first-fit decreasing, it needs at most about 11/9 of the optimal number of bins (Johnson's bound), and with
many items much smaller than the capacity it leaves almost no room: its waste is mostly in the last few bins.
Bins come out in the order they were opened (so the largest items' bins first), each listing its items in input
order. The same sizes always give the same bins.

The fullest bin that fits is found in O(1) big-integer operations: one bit per possible remaining room
(0..capacity) says whether an open bin has exactly that room, so the best fit for an item of size s is the lowest
set bit at or above s. Each room keeps its bins in a heap, so ties go to the bin opened first. A million items
pack in about a second (see bench/pack.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def best_fit_decreasing(sizes: Sequence[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """Bins of item indices (into `sizes`), in the order they were opened, items in input order in each bin."""
    lengths = np.asarray(sizes, dtype=np.int64)
    if lengths.size and (int(lengths.min()) < 1 or int(lengths.max()) > capacity):
        raise ValueError(f"every size must be between 1 and the capacity {capacity}")
    order = np.argsort(-lengths, kind="stable").tolist()  # largest first; equal sizes in input order
    size_of = lengths.tolist()
    rooms: dict[int, list[int]] = {}  # remaining room -> heap of the open bins that have exactly that room
    occupied = 0  # bit r is set when some open bin has exactly r positions left
    bins: list[list[int]] = []
    for item in order:
        size = size_of[item]
        above = occupied >> size
        if above:
            room = size + (above & -above).bit_length() - 1  # the smallest room that fits: the fullest bin
            heap = rooms[room]
            target = heapq.heappop(heap)
            if not heap:
                occupied ^= 1 << room
            bins[target].append(item)
            left = room - size
        else:
            target = len(bins)
            bins.append([item])
            left = capacity - size
        if left:  # a full bin takes nothing more: it leaves the search
            heap = rooms.setdefault(left, [])
            if not heap:
                occupied |= 1 << left
            heapq.heappush(heap, target)
    for items in bins:
        items.sort()
    return bins
