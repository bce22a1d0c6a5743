"""Every replica's pool status in one place, for ``pool://status`` under ``--engine ray``.

A call through a deployment handle reaches one replica of the deployment, so the front cannot ask
each replica in turn. Instead each replica publishes its status every few seconds to a
:class:`StatusBoard`, a named detached Ray actor (one per application name, like the job board), and
the front reads the board with a timeout. The board stamps each record with its own clock when it
arrives (the nodes' clocks need not agree): a replica not heard from for ``stale_after`` seconds (its
process or node is gone, or it is stuck) is shown ``reachable: false`` with how long ago it was last
heard, never waited for; after ``forget_after`` seconds it is dropped (Serve has replaced it).

Ray is imported only by :func:`connect` and :func:`gather`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

logger = logging.getLogger(__name__)

NAMESPACE = "multimodal-mcp"


def board_name(app_name: str) -> str:
    """The board of one application name (``RaySettings.app_name``)."""
    return f"{app_name}-replica-status"


class StatusBoard:
    """The latest status record of each replica, by replica id (the actor's class; plain Python).

    Args:
        forget_after: seconds after its last record that a replica is dropped.
    """

    def __init__(self, forget_after: float = 300.0) -> None:
        self._forget_after = forget_after
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}

    def publish(self, replica: str, record: dict[str, Any]) -> None:
        self._records[replica] = (time.monotonic(), record)

    def records(self) -> list[tuple[float, dict[str, Any]]]:
        """``(seconds since it arrived, record)`` for each replica heard from within ``forget_after``."""
        now = time.monotonic()
        for replica, (at, _) in list(self._records.items()):
            if now - at > self._forget_after:
                del self._records[replica]
        return [(now - at, record) for at, record in self._records.values()]


def connect(name: str, *, forget_after: float = 300.0) -> Any:
    """The board actor ``name``, created on first use (blocks: call it off the event loop; needs
    ``ray.init`` done, as inside a replica)."""
    import ray

    actor_class = ray.remote(num_cpus=0)(StatusBoard)
    return actor_class.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(forget_after)


async def publish(board: Any, replica: str, record: dict[str, Any], *, wait_seconds: float) -> None:
    """Send one record, waiting at most ``wait_seconds`` for the board to take it.

    Raises:
        TimeoutError: the board did not answer in time.
    """
    ref = board.publish.remote(replica, record)
    await asyncio.wait_for(asyncio.wrap_future(ref.future()), wait_seconds)


async def gather(board: Any, *, wait_seconds: float, stale_after: float) -> dict[str, Any]:
    """The replicas' records, each with ``reachable`` (heard from within ``stale_after`` s) and
    ``last_heard_seconds``, sorted by deployment then replica; or, when the board does not answer
    within ``wait_seconds``, ``{"reachable": false, "error": ...}`` (never an exception, never a hang)."""
    try:
        ref = board.records.remote()
        found: list[tuple[float, dict[str, Any]]] = await asyncio.wait_for(
            asyncio.wrap_future(ref.future()), wait_seconds
        )
    except Exception:
        logger.warning("the replicas' status board did not answer", exc_info=True)
        return {
            "reachable": False,
            "error": f"the replicas' status did not answer within {wait_seconds:g} s; try again",
        }
    # Tenths rounded up: an unreachable replica never shows an age at or under the limit (3.04 s
    # shown as 3.0 while "not heard from for over 3 s").
    replicas = [
        {**record, "reachable": age <= stale_after, "last_heard_seconds": math.ceil(age * 10) / 10}
        for age, record in found
    ]
    replicas.sort(key=lambda r: (str(r.get("deployment")), str(r.get("replica"))))
    return {"reachable": True, "replicas": replicas}
