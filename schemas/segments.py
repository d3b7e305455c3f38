"""Where the documents of packed rows begin, from `segment_ids`: the one rule every reader of the shards uses.

A document begins at the first position of every row that has positions, and at every position whose segment id
differs from the one before it; it runs to where the next one begins (or the positions end). Only changes count,
not values: the ids need not start at 0 or count up by one (the exports check that they do; this does not), and
a row that holds no position holds no document.

A worked example: three rows laid end to end, `row_offsets` [0, 5, 5, 8] (the middle row is empty),

    position      0  1  2  3  4 | 5  6  7
    segment_ids   0  0  1  1  2 | 2  2  0
    a document    ^     ^     ^   ^     ^     position 5 begins one because a row begins there, though its id
                                              (2) is the id before it

so `segment_bounds(segment_ids, row_offsets)` is starts [0, 2, 4, 5, 7] and lengths [2, 2, 1, 2, 1], and without
`row_offsets` (one row of all 8 positions) starts [0, 2, 4, 7] and lengths [2, 2, 3, 1].
"""

from __future__ import annotations

import numpy as np


def segment_bounds(segment_ids: np.ndarray, row_offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths), int64, of every document in flat `segment_ids`, in order. Row r is the positions
    `[row_offsets[r], row_offsets[r + 1])`; the rows must cover all of `segment_ids` (by default, one row does)."""
    segments = np.asarray(segment_ids)
    offsets = np.asarray([0, segments.size] if row_offsets is None else row_offsets, dtype=np.int64)
    if (offsets[[0, -1]].tolist() if offsets.size else [0, 0]) != [0, segments.size]:
        raise ValueError(f"row offsets must run from 0 to {segments.size}, the number of positions")
    begins = np.zeros(segments.size, dtype=bool)
    begins[1:] = segments[1:] != segments[:-1]
    row_starts = offsets[:-1]
    begins[row_starts[row_starts < offsets[1:]]] = True
    starts = np.flatnonzero(begins).astype(np.int64)
    return starts, np.diff(np.append(starts, segments.size))
