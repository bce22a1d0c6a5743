"""What the Ray Serve engine is told: the cluster, the timeouts, and each family's deployment."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FamilySettings:
    """One deployment (a model family): how many replicas, what each needs, and its queue bounds.

    ``num_gpus`` is Ray's logical share of a GPU per replica (0.5: two replicas per GPU); it does not
    bound memory, so the replica's pool budget is scaled to it instead. ``max_ongoing_requests`` is
    how many calls a replica takes at once (its pool's lane queues them), ``max_queued_requests`` how
    many may wait in front of all replicas before callers are told the server is busy.
    ``node_labels`` places the replicas on nodes carrying those labels (e.g. ``{"gpu": "h100"}``).
    ``max_models_per_replica`` is how many of the family's checkpoints (the models called by name)
    Serve's multiplexed cache keeps on one replica (``max_num_models_per_replica``): when a call for
    another one is routed there, the least recently used is released from that replica's pool. None:
    all of them (only the pool's memory budget evicts); 1 for checkpoints that each fill the
    replica's GPU share, so Serve spreads them over the replicas instead of swapping them.
    """

    num_replicas: int = 1
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 8
    max_queued_requests: int = 16
    node_labels: dict[str, str] = field(default_factory=dict)
    max_models_per_replica: int | None = None


@dataclass(frozen=True)
class RaySettings:
    """The engine's settings (CLI flags: ``--engine ray``, ``--ray-address``, ``--ray-*-timeout``).

    ``deploy`` False: the families were deployed already (``serve deploy`` with a config file, or a
    KubeRay RayService); the engine only checks that they run.

    Times are seconds. ``call_timeout`` bounds a whole call to a deployment; ``silence_timeout`` the
    time without a word from the replica (replicas send a heartbeat every ``heartbeat`` s while they
    work, so a lost node is noticed within it); ``deploy_timeout`` how long deploying may take before
    an unschedulable deployment is reported. ``families`` maps a deployment name to its settings;
    ``assign`` maps a model name to a deployment name (default: see :func:`.families.plan`);
    ``only``, when set, names the models to run on Ray: the other local models stay in the front's
    own pool (e.g. a CLIP model, whose calls are short enough for the hops to show).

    ``front``, when set, deploys the MCP front itself as ``front.num_replicas`` replicas behind
    Serve's HTTP proxy at ``http_host``:``http_port`` (see :mod:`.front`; ``job_board_redis`` then
    names the fronts' Redis job board, else they share the cluster's actor); unset, the front runs
    in the process that starts the engine.

    ``safety`` True runs the safety filter (``[server.safety]``, when on) as deployment ``safety``
    instead of in the front (its classifier is then needed on the nodes, not in the front).

    Each replica publishes its status every ``status_interval`` s; ``pool://status`` waits at most
    ``status_timeout`` s for them and shows a replica not heard from for ``status_stale_after`` s
    as unreachable.
    """

    address: str | None = None
    deploy: bool = True
    app_name: str = "multimodal-mcp"
    call_timeout: float = 1800.0
    silence_timeout: float = 60.0
    heartbeat: float = 2.0
    deploy_timeout: float = 300.0
    status_interval: float = 5.0
    status_timeout: float = 3.0
    status_stale_after: float = 20.0
    default_family: FamilySettings = FamilySettings()
    families: dict[str, FamilySettings] = field(default_factory=dict)
    assign: dict[str, str] = field(default_factory=dict)
    only: frozenset[str] | None = None
    front: FamilySettings | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    job_board_redis: str | None = None
    safety: bool = False
    local_cpus: int | None = None
    local_object_store_bytes: int | None = None

    def family(self, name: str) -> FamilySettings:
        return self.families.get(name, self.default_family)
