"""The shared job board: a job started on one front is seen, awaited and cancelled from another.

Two JobManagers stand for two fronts; they share a board: in memory (what the Ray actor runs) and
on Redis (fakeredis: the same commands, no server).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

from multimodal_mcp.errors import NotFound
from multimodal_mcp.job_board import JobBoard, MemoryJobBoard, RedisJobBoard
from multimodal_mcp.jobs import JobManager, describe_failure
from multimodal_mcp.principals import acting_as

pytestmark = pytest.mark.anyio  # at collection, so anyio's own parametrization keeps the board's


class Made(BaseModel):
    image_id: str

    def summary(self) -> str:
        return f"made {self.image_id}"


def _memory() -> JobBoard:
    return MemoryJobBoard(ttl_seconds=60)


def _redis() -> JobBoard:
    fakeredis = pytest.importorskip("fakeredis")
    return RedisJobBoard(fakeredis.FakeAsyncRedis(), ttl_seconds=60)


@pytest.fixture(params=["memory", "redis"])
def board(request: pytest.FixtureRequest) -> JobBoard:
    return _memory() if request.param == "memory" else _redis()


def _fronts(tg: Any, board: JobBoard) -> tuple[JobManager, JobManager]:
    def front() -> JobManager:
        return JobManager(
            lambda fn: tg.start_soon(fn),
            ttl_seconds=60,
            describe_failure=describe_failure,
            board=board,
            mirror_interval=0.05,
        )

    return front(), front()


async def test_another_front_sees_progress_then_the_result_and_its_summary(board: JobBoard) -> None:
    release = anyio.Event()
    async with anyio.create_task_group() as tg:
        a, b = _fronts(tg, board)

        async def work(progress: Any) -> Made:
            await progress(3, 10, "step 3/10")
            await release.wait()
            return Made(image_id="abc")

        with acting_as("user:alice"):
            job = a.start("generate_image", work)
            with pytest.raises(NotFound):
                b.get(job.id)  # not b's own job
            with anyio.fail_after(10):
                while await board.get(job.id) is None:  # noqa: ASYNC110 - a first publication
                    await anyio.sleep(0.02)
                while True:
                    info, _, _ = await b.shared(job.id, 0)
                    if info.progress == 3:
                        break
                    await anyio.sleep(0.02)
            assert info.status == "running" and info.total == 10 and info.message == "step 3/10"
            release.set()
            info, result, summary = await b.shared(job.id, 10)
    assert info.status == "done"
    assert result == {"image_id": "abc"} and summary == "made abc"


async def test_a_cancel_posted_on_another_front_cancels_the_job_where_it_runs(board: JobBoard) -> None:
    async with anyio.create_task_group() as tg:
        a, b = _fronts(tg, board)

        async def work(progress: Any) -> None:
            await anyio.sleep_forever()

        with acting_as("user:alice"):
            job = a.start("generate_image", work)
            with anyio.fail_after(10):
                while await board.get(job.id) is None:  # noqa: ASYNC110 - polling the board is the point
                    await anyio.sleep(0.02)
            await b.cancel_shared(job.id)
            info, _, _ = await b.shared(job.id, 10)
    assert info.status == "cancelled" and job.status == "cancelled"


async def test_a_shared_job_is_not_found_for_another_principal(board: JobBoard) -> None:
    async with anyio.create_task_group() as tg:
        a, b = _fronts(tg, board)
        with acting_as("user:alice"):
            job = a.start("generate_image", lambda progress: anyio.lowlevel.checkpoint())
            await a.wait(job, 10)
            with anyio.fail_after(10):
                while (await board.get(job.id) or {}).get("status") != "done":  # noqa: ASYNC110
                    await anyio.sleep(0.02)
        with acting_as("user:bob"), pytest.raises(NotFound):
            await b.shared(job.id, 0)
        with acting_as("user:bob"), pytest.raises(NotFound):
            await b.cancel_shared(job.id)
    assert not await board.cancel_requested(job.id)


async def test_without_a_board_a_job_of_another_front_is_not_found() -> None:
    async with anyio.create_task_group() as tg:
        alone = JobManager(lambda fn: tg.start_soon(fn), ttl_seconds=60, describe_failure=describe_failure)
        assert not alone.shares
        with pytest.raises(NotFound):
            await alone.shared("0" * 16, 0)
