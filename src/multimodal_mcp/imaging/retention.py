"""Which stored images to remove: the oldest first, until the store fits its byte budget and holds
nothing past its age limit, never an image that is held or that a kept image names as a parent.

Pure bookkeeping over an index (no file is read here); :class:`~.store.ImageStore` keeps the index
(:mod:`.store_index`) and a running total, and runs a pass only when the total is over the budget or
an image is past the age limit. A pass reads the index oldest first and stops at the first image that
is neither too old nor needed to get under the budget, so its cost follows what it removes, not the
store's size.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One stored image as retention sees it."""

    created: float
    """When it was stored, in seconds since the epoch."""
    size: int
    """Bytes on disk: the image file and its record."""
    parents: tuple[str, ...] = ()
    """Ids of the images it was made from (they are kept as long as it is)."""


def plan_removals(
    entries: Mapping[str, Entry],
    *,
    total: int,
    budget: int | None,
    cutoff: float | None,
    held: Collection[str] = (),
) -> list[str]:
    """The ids to remove, in removal order (oldest first).

    An image is removed while the running total is over ``budget`` bytes, or when it was created
    before ``cutoff`` (seconds since the epoch); ``None`` turns either rule off. Never removed: an id
    in ``held``, and an image that another image still in the store names among its ``parents``
    (once every such child is removed in the same pass, the parent becomes removable).

    Args:
        entries: every stored image by id.
        total: the bytes the store holds now (the sum of the entries' sizes).
        budget: the bytes to get down to, or None for no size rule.
        cutoff: remove images created before this time, or None for no age rule.
        held: ids in use (live jobs, retained results).
    """
    children: Counter[str] = Counter(
        parent for entry in entries.values() for parent in set(entry.parents) if parent in entries
    )
    oldest = sorted(entries.items(), key=lambda item: (item[1].created, item[0]))
    return plan_oldest_first(
        oldest, children=children.__getitem__, total=total, budget=budget, cutoff=cutoff, held=held
    )


def plan_oldest_first(
    oldest: Iterable[tuple[str, Entry]],
    *,
    children: Callable[[str], int],
    total: int,
    budget: int | None,
    cutoff: float | None,
    held: Collection[str] = (),
) -> list[str]:
    """:func:`plan_removals` over images read oldest first, lazily: ``oldest`` is consumed only as
    far as the rules reach, and ``children(id)`` (how many stored images name ``id`` as a parent) is
    asked only of the images the rules reach."""
    stream = iter(oldest)
    head = next(stream, None)
    requeued: list[tuple[float, str]] = []  # blocked parents whose last child went in this pass
    blocked: dict[str, Entry] = {}  # too old or over budget, but still referred to (or held)
    gone_children: Counter[str] = Counter()
    removed: list[str] = []
    while True:
        if requeued and (head is None or requeued[0] < (head[1].created, head[0])):
            _, image_id = heapq.heappop(requeued)
            entry = blocked.pop(image_id)
        elif head is not None:
            image_id, entry = head
            head = next(stream, None)
        else:
            break
        expired = cutoff is not None and entry.created < cutoff
        over = budget is not None and total > budget
        if not (expired or over):
            break  # everything left is newer and the budget is met
        if image_id in held or children(image_id) - gone_children[image_id] > 0:
            blocked[image_id] = entry
            continue
        removed.append(image_id)
        total -= entry.size
        for parent in set(entry.parents):
            gone_children[parent] += 1
            if parent in blocked and parent not in held and children(parent) - gone_children[parent] <= 0:
                heapq.heappush(requeued, (blocked[parent].created, parent))
    return removed
