"""How the foreach path chunks a step's tensors: ``transient_budget`` and ``chunk_bounds``.

The transient-memory bound these give is measured in ``test_optim_memory.py``; here the
arithmetic itself, over random tensor sizes.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adabalance_hf.optim._multi_tensor import chunk_bounds, transient_budget

sizes = st.lists(st.integers(1, 10_000), max_size=40)


def test_budget_is_a_tenth_of_the_elements_or_the_largest_tensor() -> None:
    assert transient_budget([1000] * 20) == 2000  # 10% of 20,000
    assert transient_budget([50_000, 10, 10]) == 50_000  # one tensor must fit
    assert transient_budget([]) == 0


@given(numels=sizes, budget=st.integers(1, 20_000))
def test_chunks_cover_every_tensor_once_in_order(numels: list[int], budget: int) -> None:
    bounds = chunk_bounds(numels, budget)
    covered = [i for start, end in bounds for i in range(start, end)]
    assert covered == list(range(len(numels)))
    assert all(start < end for start, end in bounds)


@given(numels=sizes, budget=st.integers(1, 20_000))
def test_chunks_keep_to_the_budget_and_are_as_large_as_it_allows(numels, budget) -> None:
    bounds = chunk_bounds(numels, budget)
    for start, end in bounds:
        total = sum(numels[start:end])
        assert total <= budget or end - start == 1  # a too-large tensor alone, never split
    for start, end in bounds[:-1]:
        assert sum(numels[start : end + 1]) > budget  # the next tensor did not fit


@given(numels=sizes)
def test_the_step_budget_gives_chunks_of_at_most_it(numels: list[int]) -> None:
    budget = transient_budget(numels)
    for start, end in chunk_bounds(numels, budget):
        assert sum(numels[start:end]) <= budget


def test_a_chunk_fills_the_budget_exactly_and_a_large_tensor_stands_alone() -> None:
    assert chunk_bounds([2, 2, 2, 2], 4) == [(0, 2), (2, 4)]
    assert chunk_bounds([1, 9, 1, 1], 4) == [(0, 1), (1, 2), (2, 4)]
    assert chunk_bounds([], 4) == []
