"""Split one test run across CI runners: ``--vmprobe-shard I/N``.

Shard ``I`` of ``N`` keeps the collected tests whose position, in the order of
their sorted node ids, is ``I-1`` modulo ``N``. Every runner collects the same
tests (same code, same options), so the split is deterministic, the shards
are disjoint, together they hold every test, and their sizes differ by at
most one. Sorting by node id makes the split independent of collection order
(``-p randomly``, plugins that reorder).
"""
from __future__ import annotations

import re
from typing import Sequence, TypeVar

T = TypeVar("T")

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` → ``(2, 3)``; raises ValueError saying what is wanted."""
    m = _SHARD.match(str(text))
    if not m:
        raise ValueError(f"--vmprobe-shard wants I/N (this runner's shard I of N, e.g. 1/2), got {text!r}")
    index, total = int(m[1]), int(m[2])
    if total < 1 or not 1 <= index <= total:
        raise ValueError(f"--vmprobe-shard {text}: I must be between 1 and N (N ≥ 1), e.g. 1/{max(total, 2)}")
    return index, total


def split(items: Sequence[T], index: int, total: int, key=lambda item: item.nodeid) -> tuple[list[T], list[T]]:
    """(kept, deselected) for shard ``index`` of ``total``, keeping the items' own order."""
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    mine = {i for pos, i in enumerate(order) if pos % total == index - 1}
    kept = [item for i, item in enumerate(items) if i in mine]
    dropped = [item for i, item in enumerate(items) if i not in mine]
    return kept, dropped
