"""get_job and cancel_job: reach a call that outlived the client's wait."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, PrivateAttr

from multimodal_mcp.errors import NotFound
from multimodal_mcp.jobs import JobInfo
from multimodal_mcp.tools.common import Params, Progress, Result, Services

JOB_ID_PATTERN = r"^[0-9a-f]{16}$"
JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN, description="The job id from a job handle.")]


class GetJobParams(Params):
    job_id: JobId
    wait_seconds: Annotated[
        float,
        Field(ge=0, le=50, description="Wait this long for it to finish (0: status now)."),
    ] = 30


class JobResult(Result):
    job: JobInfo
    result: dict[str, Any] | None = Field(
        description="The tool's result once the job is done, as that tool returns it."
    )
    _inner: Result | None = PrivateAttr(default=None)
    _said: str | None = PrivateAttr(default=None)  # the summary of a job another front ran

    def summary(self) -> str:
        job = self.job
        if self._inner is not None:
            return self._inner.summary()
        if self._said is not None:
            return self._said
        if job.status == "running":
            where = f" ({job.message})" if job.message else ""
            return (
                f"Job {job.id} ({job.tool}) is still running after {job.elapsed_seconds:.0f} s{where}. "
                f"Call get_job(job_id='{job.id}', wait_seconds=30) again, or cancel_job to stop it."
            )
        if job.status == "failed":
            return f"Job {job.id} ({job.tool}) failed: {job.error}"
        return f"Job {job.id} ({job.tool}) was cancelled."

    def preview_ids(self) -> list[str]:
        return self._inner.preview_ids() if self._inner is not None else []


def job_result(info: JobInfo, inner: Result | None) -> JobResult:
    out = JobResult(job=info, result=inner.model_dump(mode="json") if inner is not None else None)
    out._inner = inner
    return out


async def get_job(params: GetJobParams, services: Services, progress: Progress | None = None) -> JobResult:
    """Get the result of a call that returned a job handle, or its status while it runs."""
    try:
        job = services.jobs.get(params.job_id)
    except NotFound:
        if not services.jobs.shares:
            raise
        info, result, said = await services.jobs.shared(params.job_id, params.wait_seconds)
        out = JobResult(job=info, result=result)
        out._said = said
        return out
    await services.jobs.wait(job, params.wait_seconds, progress)
    info = job.info(services.jobs.now())
    if job.status == "done":
        job.delivered = True  # its images are no longer held for it (see JobManager.held_images)
    return job_result(info, job.result if job.status == "done" else None)


class CancelJobParams(Params):
    job_id: JobId


async def cancel_job(
    params: CancelJobParams, services: Services, progress: Progress | None = None
) -> JobResult:
    """Cancel a running job; a generation stops at its next step."""
    try:
        job = services.jobs.get(params.job_id)
    except NotFound:
        if not services.jobs.shares:
            raise
        await services.jobs.cancel_shared(params.job_id)  # the front running it cancels it
        info, _, _ = await services.jobs.shared(params.job_id, 10)
        return job_result(info, None)
    services.jobs.cancel(job)
    await services.jobs.wait(job, 10)
    return job_result(job.info(services.jobs.now()), None)
