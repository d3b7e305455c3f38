"""Best-fit decreasing: the published example, and properties on random sizes, against a plain reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lossmask.pipeline.binpack import best_fit_decreasing


def reference_bfd(sizes: list[int], capacity: int) -> list[list[int]]:
    """The definition, written the slow way: largest first (ties: input order), into the fullest bin that fits
    (ties: the bin opened first), else a new bin."""
    bins: list[list[int]] = []
    used: list[int] = []
    for item in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        fits = [(capacity - used[b], b) for b in range(len(bins)) if used[b] + sizes[item] <= capacity]
        if fits:
            _, b = min(fits)
            bins[b].append(item)
            used[b] += sizes[item]
        else:
            bins.append([item])
            used.append(sizes[item])
    return [sorted(b) for b in bins]


def test_the_published_example():
    """TRL's pack_dataset example: [1, 2, 3], [4, 5, 6, 7], [8] with N = 4 -> [4, 5, 6, 7] and [1, 2, 3, 8]."""
    documents = [[1, 2, 3], [4, 5, 6, 7], [8]]
    bins = best_fit_decreasing([len(d) for d in documents], 4)
    assert [[token for i in b for token in documents[i]] for b in bins] == [[4, 5, 6, 7], [1, 2, 3, 8]]


def test_the_fullest_bin_that_fits_wins_and_ties_go_to_the_bin_opened_first():
    # 7 | 4 + 4 ; then 1 fits both: first fit would take the first bin (room 3), best fit the fullest (room 2).
    assert best_fit_decreasing([7, 4, 4, 1], 10) == [[0], [1, 2, 3]]
    # 6 | 6 ; then 4 fits both rooms of 4 equally: the bin opened first takes it.
    assert best_fit_decreasing([6, 6, 4], 10) == [[0, 2], [1]]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), capacity=st.integers(1, 64))
def test_properties_and_agreement_with_the_definition(data, capacity):
    sizes = data.draw(st.lists(st.integers(1, capacity), max_size=80))
    bins = best_fit_decreasing(sizes, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(sizes)))  # every item exactly once
    assert all(sum(sizes[i] for i in b) <= capacity for b in bins)  # no bin over capacity
    assert all(b == sorted(b) and b for b in bins)  # items in input order, no empty bin
    assert sum(2 * sum(sizes[i] for i in b) <= capacity for b in bins) <= 1  # any-fit: at most one bin half empty
    assert bins == reference_bfd(sizes, capacity)
    assert best_fit_decreasing(sizes, capacity) == bins  # deterministic


@pytest.mark.parametrize("sizes", [[0], [5], [-1]])
def test_sizes_outside_one_to_capacity_are_refused(sizes):
    with pytest.raises(ValueError, match="between 1 and the capacity"):
        best_fit_decreasing(sizes, 4)
