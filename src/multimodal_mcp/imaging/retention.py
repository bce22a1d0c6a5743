"""Which stored images to remove: the oldest first, until the store fits its byte budget and holds
nothing past its age limit, never an image that is held or that a kept image names as a parent.

Pure bookkeeping over an in-memory index (no file is read here); :class:`~.store.ImageStore` keeps
the index and a running total, and runs a pass only when the total is over the budget or the
periodic age sweep is due.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Mapping
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
    queue = [(entry.created, image_id) for image_id, entry in entries.items()]
    heapq.heapify(queue)
    blocked: set[str] = set()  # too old or over budget, but still referred to
    removed: list[str] = []
    while queue:
        created, image_id = heapq.heappop(queue)
        expired = cutoff is not None and created < cutoff
        over = budget is not None and total > budget
        if not (expired or over):
            break  # everything left is newer and the budget is met
        if image_id in held or children[image_id] > 0:
            blocked.add(image_id)
            continue
        removed.append(image_id)
        total -= entries[image_id].size
        for parent in set(entries[image_id].parents):
            if parent not in entries:
                continue
            children[parent] -= 1
            if children[parent] == 0 and parent in blocked and parent not in held:
                blocked.discard(parent)
                heapq.heappush(queue, (entries[parent].created, parent))
    return removed
