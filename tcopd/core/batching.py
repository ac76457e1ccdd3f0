"""Token-budget micro-batching: which sequences go through a model forward together.

Two layouts, one plan format (a list of micro-batches, each a list of sequence indices):

- **padded** (:func:`plan_padded`): sequences sorted by length (longest first) and grouped
  greedily while ``len(group) × max_len ≤ budget``; each group is one right-padded ``(B, L)``
  batch. Sorting makes neighbours similar in length, so padding is a small fraction.
- **packed** (:func:`plan_packed`): sequences concatenated into rows of at most ``budget`` real
  tokens with per-sequence position ids (no padding at all); needs an attention kernel that
  keeps packed sequences apart (flash-attention varlen, or transformers' packed-mask detection).

A sequence longer than the budget gets a micro-batch of its own (the budget is a target, not a
guarantee: the caller decides whether that sequence fits).
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_padded(
    lengths: Sequence[int], token_budget: int, max_batch: int | None = None
) -> list[list[int]]:
    """Groups of indices whose padded size ``len(group) · max(lengths[group])`` fits the budget.

    Longest first (so an out-of-memory failure shows up on the first micro-batch, not the last);
    ties keep input order, so the plan is deterministic.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    current_max = 0
    for i in order:
        new_max = max(current_max, lengths[i])
        full = max_batch is not None and len(current) >= max_batch
        if current and ((len(current) + 1) * new_max > token_budget or full):
            batches.append(current)
            current, new_max = [], lengths[i]
        current.append(i)
        current_max = new_max
    if current:
        batches.append(current)
    return batches


def plan_packed(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Rows of indices whose summed length fits the budget (first-fit decreasing bin packing)."""
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(token_budget - lengths[i])
    return rows


def padded_tokens(
    lengths: Sequence[int], batches: Sequence[Sequence[int]], packed: bool = False
) -> int:
    """Tokens a plan actually pushes through the model (real + padding)."""
    if packed:
        return sum(lengths[i] for b in batches for i in b)
    return sum(len(b) * max((lengths[i] for i in b), default=0) for b in batches)


def padding_fraction(
    lengths: Sequence[int], batches: Sequence[Sequence[int]], packed: bool = False
) -> float:
    """``1 − real / processed`` tokens of a plan (0.0 for packing or equal lengths)."""
    total = padded_tokens(lengths, batches, packed)
    if total == 0:
        return 0.0
    return 1.0 - sum(lengths[i] for b in batches for i in b) / total
