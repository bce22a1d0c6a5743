"""JobManager: a job belongs to the principal that started it, and runs as that principal."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from multimodal_mcp.errors import NotFound
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.jobs import JobManager, describe_failure
from multimodal_mcp.principals import acting_as, current_principal

from helpers import photo


async def test_a_job_runs_as_its_owner_and_is_not_found_for_anyone_else() -> None:
    async with anyio.create_task_group() as tg:
        jobs = JobManager(lambda fn: tg.start_soon(fn), ttl_seconds=60, describe_failure=describe_failure)
        ran_as: list[str] = []

        async def work(progress: object) -> str:
            ran_as.append(current_principal())
            return "done"

        with acting_as("user:alice"):
            job = jobs.start("generate_image", work)
        with acting_as("user:bob"):  # the job runs as alice even when bob's task spawns the wait
            with pytest.raises(NotFound) as theirs:
                jobs.get(job.id)
            with pytest.raises(NotFound) as unknown:
                jobs.get("0" * 16)
        assert str(theirs.value).replace(job.id, "X") == str(unknown.value).replace("0" * 16, "X")
        with acting_as("user:alice"):
            assert await jobs.wait(jobs.get(job.id), 10)
        assert ran_as == ["user:alice"] and job.result == "done"


async def test_the_images_a_job_touches_are_held_while_it_runs_and_while_its_result_is_kept(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path)
    clock = [0.0]
    started, finish = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        jobs = JobManager(lambda fn: tg.start_soon(fn), ttl_seconds=60, describe_failure=describe_failure)
        jobs._clock = lambda: clock[0]

        async def work(progress: object) -> str:
            # Written from a worker thread, as the tools do: the job's hold follows it there.
            record = await anyio.to_thread.run_sync(lambda: store.put(photo("coffee", 16), kind="input"))
            started.set()
            await finish.wait()
            return record.id

        job = jobs.start("describe_image", work)
        await started.wait()
        assert jobs.held_images() == job.images and len(job.images) == 1
        finish.set()
        assert await jobs.wait(job, 10)
        clock[0] += 59
        assert jobs.held_images() == {job.result}  # retained: get_job may still render it
        clock[0] += 2
        assert jobs.held_images() == set()


async def test_a_delivered_result_no_longer_holds_its_images(tmp_path: Path) -> None:
    """Every call runs as a job; once its result reached the caller, the store's limits apply to
    its images again (else nothing made within job_ttl_seconds could ever be removed)."""
    store = ImageStore(tmp_path)
    async with anyio.create_task_group() as tg:
        jobs = JobManager(lambda fn: tg.start_soon(fn), ttl_seconds=3600, describe_failure=describe_failure)

        async def work(progress: object) -> str:
            return (await anyio.to_thread.run_sync(lambda: store.put(photo("coffee", 16), kind="input"))).id

        job = jobs.start("describe_image", work)
        assert await jobs.wait(job, 10)
        assert jobs.held_images() == {job.result}  # finished, not yet returned to the caller
        job.delivered = True
        assert jobs.held_images() == set()


class _Labels(BaseModel):
    labels: list[str]


async def test_finished_jobs_are_kept_within_a_count_per_principal_and_a_total_of_bytes() -> None:
    """The issue: finished jobs were kept an hour with no cap (about 55 KB each for 64 long labels)."""
    big = _Labels(labels=["a long label " * 66] * 64)  # about 55 KB as JSON
    size = len(big.model_dump_json())
    async with anyio.create_task_group() as tg:
        jobs = JobManager(
            lambda fn: tg.start_soon(fn),
            ttl_seconds=3600,
            describe_failure=describe_failure,
            max_retained_per_principal=3,
            max_retained_bytes=5 * size,
        )

        async def work(progress: object) -> _Labels:
            return big

        async def run_as(principal: str) -> str:
            with acting_as(principal):
                job = jobs.start("clip_classify", work)
                assert await jobs.wait(job, 10)
            return job.id

        alice = [await run_as("user:alice") for _ in range(10)]
        bob = [await run_as("user:bob") for _ in range(2)]
        assert jobs.retained() == (5, 5 * size)
        with acting_as("user:alice"):
            for job_id in alice[:7]:  # the oldest went first
                with pytest.raises(NotFound, match=r"pool\.max_jobs_per_principal"):
                    jobs.get(job_id)
            assert [jobs.get(j).result for j in alice[7:]] == [big] * 3
        with acting_as("user:bob"):  # alice's count never drops bob's jobs
            assert all(jobs.get(j).status == "done" for j in bob)
        carol = await run_as("user:carol")  # past the bytes: the oldest of anyone's goes
        assert jobs.retained() == (5, 5 * size)
        with acting_as("user:alice"), pytest.raises(NotFound):
            jobs.get(alice[7])
        with acting_as("user:carol"):
            assert jobs.get(carol).status == "done"
