"""Starting or joining a Ray cluster, deploying the model families, and calling them.

:class:`RayEngine` is the hub's engine (:class:`multimodal_mcp.hub.Engine`) under ``serve --engine
ray``: it deploys one Serve application per model family (:mod:`.families`), each running
:class:`.replica.ModelReplica`, and hands the hub a remote handle (:mod:`.remote`) for each model
it serves. Every call to a deployment goes through :class:`ServeCaller`, which

- sends the model name as Serve's multiplexed model id, so the calls of a family's checkpoint go to
  the replica that has it loaded (see :mod:`.replica` for what Serve's cache evicts);
- streams the replica's frames (progress, heartbeats, the result) and forwards the progress;
- bounds the call by ``call_timeout`` and by ``silence_timeout`` without a frame (a lost node is
  noticed, never waited for), cancelling the deployment response on either;
- cancels the deployment response explicitly when the calling task is cancelled (cancelling the task
  that awaits a response does not cancel the request in Serve);
- maps Serve's backpressure to :class:`~multimodal_mcp.errors.Busy`, a lost replica or node to a
  :class:`~multimodal_mcp.errors.BackendError` saying so, and anything else to a BackendError with
  the id the details were logged under: no Ray traceback, process id or address reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.cluster import status as status_board
from multimodal_mcp.cluster.families import SAFETY, SERVED_TASKS, plan
from multimodal_mcp.cluster.remote import REMOTE, RemoteSafetyChecker
from multimodal_mcp.cluster.replica import ModelReplica
from multimodal_mcp.cluster.settings import FamilySettings, RaySettings
from multimodal_mcp.cluster.wire import raise_error
from multimodal_mcp.config import Config, ConfigError, ModelSpec
from multimodal_mcp.errors import BackendError, Busy, MultimodalError
from multimodal_mcp.handles import Handle, Progress

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.2"
"""The address a local cluster binds to on Linux: Ray rewrites 127.0.0.1 to the machine's routable
address, while the rest of 127.0.0.0/8 stays on the loopback interface."""


def local_models(config: Config) -> set[str]:
    """The configured models of local backends (what a deployment can serve)."""
    from multimodal_mcp import registry

    return {
        name
        for name, spec in config.models.items()
        if isinstance(registry.get(spec.backend), registry.LocalBackend)
    }


def app_name(settings: RaySettings, family: str) -> str:
    """The Serve application of one family: ``<app_name>-<family>``."""
    return f"{settings.app_name}-{family}"


def family_deployment(
    config: Config, family: str, models: list[str], settings: FamilySettings, **kw: Any
) -> Any:
    """The bound Serve application running ``models`` as deployment ``family``; ``kw`` go to
    :class:`.replica.ModelReplica` (``max_models`` comes from ``settings``)."""
    from ray import serve

    actor: dict[str, Any] = {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus}
    if settings.node_labels:
        actor["label_selector"] = dict(settings.node_labels)
    deployment: Any = serve.deployment(
        ModelReplica,
        name=family,
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        ray_actor_options=actor,
    )
    called = [m for m in models if m in config.models and config.models[m].task in SERVED_TASKS]
    max_models = settings.max_models_per_replica or max(len(called), 1)
    return deployment.bind(config, models, max_models=max_models, **kw)


class ServeCaller:
    """Calls a model's deployment (see the module docstring for timeouts, cancel and errors)."""

    def __init__(self, settings: RaySettings, where: dict[str, str]) -> None:
        self._settings = settings
        self._where = where
        self._handles: dict[str, Any] = {}
        self.answered_by: deque[tuple[str, str | None]] = deque(maxlen=256)
        """``(model, replica id)`` of the last calls answered, oldest first (for debugging: which
        replica Serve's multiplexed routing chose; also logged at debug level)."""

    def _handle(self, family: str) -> Any:
        found = self._handles.get(family)
        if found is None:
            from ray import serve

            found = self._handles[family] = serve.get_deployment_handle(
                family, app_name=app_name(self._settings, family)
            )
        return found

    async def __call__(
        self,
        model: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        progress: Progress | None,
    ) -> Any:
        family = self._where[model]
        settings = self._settings
        response = (
            self._handle(family)
            .options(stream=True, multiplexed_model_id=model)
            .call.remote(model, method, args, kwargs, progress is not None)
        )
        deadline = time.monotonic() + settings.call_timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                wait = min(remaining, settings.silence_timeout)
                try:
                    if wait <= 0:
                        raise TimeoutError
                    frame = await asyncio.wait_for(response.__anext__(), wait)
                except TimeoutError:
                    raise BackendError(
                        f"model {model!r} did not finish within {settings.call_timeout:g} s "
                        "(the engine's call timeout); try fewer steps, a smaller image or fewer tokens"
                        if wait >= remaining
                        else f"model {model!r} stopped answering ({settings.silence_timeout:g} s without a "
                        "word from its replica: its node may be lost); try again"
                    ) from None
                except StopAsyncIteration:
                    raise BackendError(
                        f"model {model!r}'s replica ended the call without an answer"
                    ) from None
                kind = frame[0]
                if kind == "result":
                    replica = frame[2] if len(frame) > 2 else None
                    self.answered_by.append((model, replica))
                    logger.debug("%s.%s answered by replica %s of %s", model, method, replica, family)
                    return frame[1]
                if kind == "error":
                    raise_error(frame[1], frame[2])
                if kind == "progress" and progress is not None:
                    try:
                        await progress(frame[1], frame[2], frame[3])
                    except Exception:  # progress is best effort
                        logger.debug("progress notification failed", exc_info=True)
        except BaseException as exc:
            _cancel(response)
            if isinstance(exc, Exception) and not isinstance(exc, MultimodalError):
                raise _from_ray(exc, model, family, settings) from None
            raise


def _cancel(response: Any) -> None:
    """Cancel a deployment response: the replica's call is cancelled (its generator closed), or a
    request still waiting for a replica is dropped. A response that already failed (e.g. refused by
    backpressure) raises its error again from ``cancel``: nothing is left to cancel then."""
    try:
        response.cancel()
    except Exception:
        logger.debug("cancelling a deployment response that had already ended", exc_info=True)


def _from_ray(exc: Exception, model: str, family: str, settings: RaySettings) -> Exception:
    """The caller-facing error for an exception from Ray (never its text: it carries tracebacks,
    process ids and addresses)."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    if isinstance(exc, serve_errors.BackPressureError):
        queued = settings.family(family).max_queued_requests
        return Busy(
            f"model {model!r} is busy: {queued} calls are already waiting for its replicas. "
            "Try again in a few seconds."
        )
    lost = (
        ray_errors.RayActorError,
        ray_errors.NodeDiedError,
        ray_errors.WorkerCrashedError,
        ray_errors.ObjectLostError,
        ray_errors.OwnerDiedError,
        serve_errors.DeploymentUnavailableError,
    )
    if isinstance(exc, lost) or type(exc).__name__ == "ReplicaUnavailableError":
        return BackendError(
            f"the replica serving model {model!r} was lost before it answered (its process or node "
            "stopped); try again: Ray Serve replaces lost replicas"
        )
    error_id = secrets.token_hex(4)
    logger.error("call to %s (deployment %s) failed (error id %s)", model, family, error_id, exc_info=exc)
    return BackendError(f"model {model!r} failed in the cluster (error id {error_id}); try again")


class RayEngine:
    """Runs the local models of ``config`` on Ray Serve (see the module docstring).

    ``start`` and ``stop`` block (call them outside the event loop); ``handle`` is the hub's.
    """

    def __init__(
        self, config: Config, settings: RaySettings, *, replica_kwargs: dict[str, Any] | None = None
    ):
        self.config = config
        self.settings = settings
        self.plan = plan(config, settings, local=local_models(config))
        self.where = {model: family for family, models in self.plan.items() for model in models}
        self.caller = ServeCaller(settings, self.where)
        self._replica_kwargs = {
            "heartbeat": settings.heartbeat,
            "status_board": status_board.board_name(settings.app_name),
            "status_interval": settings.status_interval,
            **(replica_kwargs or {}),
        }
        self._owns_cluster = False
        self._board: Any = None

    def handle(self, name: str, spec: ModelSpec, capabilities: Capabilities) -> Handle | None:
        if name not in self.where:
            return None
        return cast(Handle, REMOTE[spec.task](self.caller, name, capabilities))

    def safety_checker(self) -> RemoteSafetyChecker | None:
        """The safety filter as deployment ``safety`` (``RaySettings.safety`` with the filter on),
        or None when it runs in the front."""
        return RemoteSafetyChecker(self.caller, SAFETY) if SAFETY in self.where else None

    def location(self, name: str) -> str | None:
        family = self.where.get(name)
        return f"ray:{family}" if family is not None else None

    async def replica_status(self) -> dict[str, Any]:
        """Each replica's status as it last published it (see :mod:`.status` and
        :meth:`.replica.ModelReplica.status`), with ``reachable`` and ``last_heard_seconds``; a
        replica silent for ``status_stale_after`` s shows unreachable. Each step (finding the
        board, the first time; reading it) waits at most ``status_timeout`` s: ``{"reachable":
        false, "error": ...}`` then, and the next read looks for the board again (it may have been
        lost with its node and created anew by the replicas)."""
        settings = self.settings
        if self._board is None:
            try:
                self._board = await asyncio.wait_for(
                    asyncio.to_thread(status_board.connect, status_board.board_name(settings.app_name)),
                    settings.status_timeout,
                )
            except Exception:
                logger.warning("cannot reach the replicas' status board", exc_info=True)
                return {"reachable": False, "error": "the replicas' status board cannot be reached"}
        found = await status_board.gather(
            self._board, wait_seconds=settings.status_timeout, stale_after=settings.status_stale_after
        )
        if not found["reachable"]:
            self._board = None
        return found

    def start(self) -> None:
        """Join the cluster at ``settings.address`` or start a local one on loopback, then deploy
        every family and wait until each runs.

        Raises:
            ConfigError: Ray is not installed, or a deployment did not start within
                ``deploy_timeout`` (unschedulable: no node has the resources or labels it asks for).
        """
        try:
            import ray
            from ray import serve
            from ray.serve.config import ProxyLocation
        except ImportError:
            raise ConfigError("--engine ray needs Ray Serve: pip install 'multimodal-mcp[ray]'") from None
        settings = self.settings
        if not ray.is_initialized():
            if settings.address:
                ray.init(address=settings.address, log_to_driver=False)
            else:
                local: dict[str, Any] = {}
                if sys.platform.startswith("linux"):
                    local["_node_ip_address"] = LOOPBACK
                # address "local": a cluster of its own, never one another program left running
                # on this machine (which a bare ray.init would join).
                ray.init(
                    address="local",
                    num_cpus=settings.local_cpus,
                    object_store_memory=settings.local_object_store_bytes,
                    include_dashboard=False,
                    log_to_driver=False,
                    **local,
                )
                self._owns_cluster = True
        if settings.front is None:
            # The front calls the deployments through handles: Serve's HTTP proxy is not needed.
            serve.start(proxy_location=ProxyLocation.Disabled)
        else:
            serve.start(
                proxy_location=ProxyLocation.HeadOnly,
                http_options={"host": settings.http_host, "port": settings.http_port},
            )
        from ray.serve.api import _run

        for family, models in self.plan.items() if settings.deploy else ():
            app = family_deployment(
                self.config, family, models, settings.family(family), **self._replica_kwargs
            )
            _run(app, _blocking=False, name=app_name(settings, family), route_prefix=None)
        self._wait_running(self.plan)
        if settings.front is not None:
            self._deploy_front(settings.front)
        logger.info(
            "Ray Serve engine: %s",
            "; ".join(f"{family}: {', '.join(models)}" for family, models in self.plan.items()),
        )

    def _deploy_front(self, front: FamilySettings) -> None:
        """Deploy the MCP front behind Serve's HTTP proxy (after the families it calls run)."""
        from ray.serve.api import _run

        from multimodal_mcp.cluster.front import FRONT, front_deployment, request_state_key

        app = front_deployment(
            self.config,
            self.settings,
            front,
            host=self.settings.http_host,
            state_key=request_state_key(),
            job_board_redis=self.settings.job_board_redis,
        )
        _run(app, _blocking=False, name=app_name(self.settings, FRONT), route_prefix="/")
        self._wait_running([FRONT])

    def _wait_running(self, families: Iterable[str]) -> None:
        from ray import serve

        deadline = time.monotonic() + self.settings.deploy_timeout
        waiting: dict[str, str] = {}
        while True:
            applications = serve.status().applications
            waiting = {}
            for family in families:
                app = applications.get(app_name(self.settings, family))
                state = str(app.status) if app is not None else "NOT_STARTED"
                if state.endswith("RUNNING"):
                    continue
                if state.endswith("DEPLOY_FAILED"):
                    raise ConfigError(f"Ray Serve could not deploy {family!r}: {_first_line(app)}")
                waiting[family] = _first_line(app) or state
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"Ray Serve did not start {', '.join(repr(f) for f in waiting)} within "
                    f"{self.settings.deploy_timeout:.0f} s (no node has the CPUs, GPUs or labels it asks "
                    f"for?): {'; '.join(m for m in waiting.values() if m)}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Shut the local cluster down (one this engine started); on a joined cluster, remove the
        front this engine deployed, while the families stay for the other fronts."""
        import ray
        from ray import serve

        if not self._owns_cluster:
            if self.settings.front is not None and ray.is_initialized():
                from multimodal_mcp.cluster.front import FRONT

                serve.delete(app_name(self.settings, FRONT))  # this process's front, not the families
            return

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self._owns_cluster = False


def _first_line(app: Any) -> str:
    if app is None:
        return ""
    messages = [app.message] + [d.message for d in app.deployments.values()]
    for message in messages:
        if message:
            return str(message).strip().splitlines()[0][:300]
    return ""
