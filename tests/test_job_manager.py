"""JobManager: a job belongs to the principal that started it, and runs as that principal."""

from __future__ import annotations

import anyio
import pytest

from multimodal_mcp.errors import NotFound
from multimodal_mcp.jobs import JobManager, describe_failure
from multimodal_mcp.principals import acting_as, current_principal


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
