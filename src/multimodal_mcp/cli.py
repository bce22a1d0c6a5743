"""Command line: ``multimodal-mcp serve | models | pull | demo | build-tiny``.

The CLI is the one place that reads the environment (home and cache directories, the optional
``MULTIMODAL_MCP_CONFIG`` file, bearer tokens in ``MULTIMODAL_MCP_TOKENS``); everything below it
receives one frozen :class:`Config`.

This module imports only the standard library at its top: the configuration (pydantic) and the
server are imported by the command that needs them, after :func:`main` has turned the garbage
collector off for the start (see :func:`_started`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from multimodal_mcp import __version__

if TYPE_CHECKING:
    from multimodal_mcp.config import Config

logger = logging.getLogger("multimodal_mcp")


def _setup_logging(level: str) -> None:
    # stdout belongs to the stdio transport: every log line goes to stderr.
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from multimodal_mcp.logs import install

    for handler in logging.getLogger().handlers:
        install(handler)  # long lines cut, repeated ones rate-limited, query strings redacted
    for noisy in ("httpx", "httpx2", "openai", "google_genai", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if logging.getLogger().level > logging.DEBUG:
        # Read by the libraries when imported (see backends.sources.quiet_progress_bars); a value the
        # user set wins.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("multimodal-mcp", appauthor=False))


def _tokens_from_env() -> dict[str, str]:
    """``MULTIMODAL_MCP_TOKENS="alice:<token>,bob:<token>"`` -> {principal: token}."""
    from multimodal_mcp.server.http import tokens_from_env

    return tokens_from_env(os.environ)


def _cuda_available() -> bool:
    """For the 'auto' profile: is there a CUDA GPU? (Imports torch where one may be present, so only
    asked when needed.)"""
    from multimodal_mcp.pool.devices import gpu_may_be_present

    if not gpu_may_be_present():
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _config_from(args: argparse.Namespace, *, http: bool = False) -> Config:
    from multimodal_mcp.config import load_config

    config_file = args.config or (
        Path(os.environ["MULTIMODAL_MCP_CONFIG"]) if os.environ.get("MULTIMODAL_MCP_CONFIG") else None
    )
    overrides: dict[str, Any] = {}
    if getattr(args, "store_dir", None):
        overrides["store_dir"] = args.store_dir
    if getattr(args, "allow_root", None):
        overrides["allowed_roots"] = args.allow_root
    home = Path.home()
    return load_config(
        profile=args.profile,
        config_file=config_file,
        cache_dir=_cache_dir(),
        home=home,
        default_allowed_roots=[] if http else [home],
        overrides=overrides,
        static_tokens=_tokens_from_env() if http else None,
        environ=os.environ,
        gpu_probe=_cuda_available,
        transport="http" if http else "stdio",
    )


def _add_config_options(
    parser: argparse.ArgumentParser,
    *,
    profile_default: str = "the config file's profile, else 'default'",
) -> None:
    from multimodal_mcp.catalogs import PROFILE_CHOICES

    parser.add_argument(
        "--config", type=Path, help="TOML config file (default: $MULTIMODAL_MCP_CONFIG, if set)"
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILE_CHOICES),
        help="built-in model profile: 'default' (real checkpoints and hosted models), 'tiny' (offline "
        "test models) or 'auto' (local on a CUDA GPU, else hosted where API keys are set, else tiny); "
        f"default: {profile_default}",
    )
    parser.add_argument("--store-dir", type=Path, help="where images are stored (overrides the config)")
    parser.add_argument(
        "--allow-root",
        type=Path,
        action="append",
        help="a directory clients may read images from (repeatable; overrides the config)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _serve(args: argparse.Namespace) -> int:
    from multimodal_mcp.config import ConfigError
    from multimodal_mcp.server.app import build_server

    config = _config_from(args, http=args.transport == "http")
    if args.engine == "ray" and args.transport != "http":
        raise ConfigError("--engine ray serves over HTTP: add --transport http")
    if args.transport == "stdio":
        server = build_server(config)
        _started()
        _stop_at_once_on_ctrl_c()
        if sys.stdin.isatty():
            print(
                "multimodal-mcp: serving MCP over stdio, waiting for an MCP client on stdin. This command "
                "is what a client (Claude Desktop, Claude Code, VS Code, ...) starts: see the README. Try "
                "the tools without one: `multimodal-mcp demo`. Ctrl-C stops.",
                file=sys.stderr,
                flush=True,
            )
        server.run("stdio")
        _exit_after_shutdown(0)

    import anyio
    import uvicorn

    from multimodal_mcp.server.connections import uvicorn_config
    from multimodal_mcp.server.http import check_binding, http_app

    http = config.server.http
    host = args.host or http.host
    port = args.port if args.port is not None else http.port
    check_binding(host, http.auth, insecure_no_auth=args.insecure_no_auth)
    if args.front_replicas:
        _started()  # this process deploys and waits: no server of its own to build
        _serve_front_on_ray(args, config, host, port)
        _exit_after_shutdown(0)
    auth = http.auth
    logger.info(
        "serving MCP over streamable HTTP at http://%s:%d/mcp; auth: %s",
        host,
        port,
        ", ".join(
            ([f"static tokens for {', '.join(t.principal for t in auth.tokens)}"] if auth.tokens else [])
            + ([f"OAuth tokens from {auth.oauth.issuer}"] if auth.oauth else [])
        )
        or "none",
    )
    engine = _ray_engine(args, config) if args.engine == "ray" else None
    try:
        board = _job_board(args, config, on_ray=engine is not None)
        app = http_app(build_server(config, engine=engine, job_board=board), config, host=host)
        uv = uvicorn.Server(uvicorn_config(app, http, host=host, port=port))
        _started()
        anyio.run(uv.serve)
    finally:
        if engine is not None:
            engine.stop()
    _exit_after_shutdown(0)


def _job_board(args: argparse.Namespace, config: Config, *, on_ray: bool) -> Any:
    """The job board shared by the fronts: Redis when named, else the cluster's actor on Ray."""
    from multimodal_mcp.config import ConfigError

    ttl = config.server.pool.job_ttl_seconds
    if args.job_board_redis:
        try:
            from multimodal_mcp.job_board import RedisJobBoard

            return RedisJobBoard.from_url(args.job_board_redis, ttl_seconds=ttl)
        except ImportError:
            raise ConfigError("--job-board-redis needs redis: pip install 'multimodal-mcp[redis]'") from None
    if on_ray:
        from multimodal_mcp.job_board import RayJobBoard

        return RayJobBoard.connect(ttl_seconds=ttl)
    return None


def _models_per_replica(text: str) -> int:
    """``--ray-max-models``: a whole number from 1 to 64."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to 64, e.g. --ray-max-models 1 (got {text!r})"
        )
    return value


def _replicas(text: str) -> int:
    """``--front-replicas``: a whole number from 0 to 64."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 to 64, e.g. --front-replicas 2 (got {text!r})"
        )
    return value


def _serve_front_on_ray(args: argparse.Namespace, config: Config, host: str, port: int) -> None:
    """``--front-replicas N``: the MCP front as N Serve replicas behind Serve's HTTP proxy; this
    process deploys everything, then waits for Ctrl-C or SIGTERM (see cluster/front.py)."""
    import signal
    import threading

    from multimodal_mcp.cluster.front import request_state_key
    from multimodal_mcp.cluster.settings import FamilySettings
    from multimodal_mcp.config import ConfigError

    if args.engine != "ray":
        raise ConfigError("--front-replicas runs the front on Ray Serve: add --engine ray")
    request_state_key()  # a key set too short is refused now, not after Ray has started
    front = FamilySettings(num_replicas=args.front_replicas, max_ongoing_requests=64, max_queued_requests=256)
    engine = _ray_engine(
        args, config, front=front, http_host=host, http_port=port, job_board_redis=args.job_board_redis
    )
    # After Ray has started: ray.init installs a SIGTERM handler of its own (a crash dump, exit 134).
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        logger.info(
            "MCP front up: %d replica(s) behind Ray Serve's HTTP proxy at http://%s:%d/mcp (stateless HTTP); "
            "Ctrl-C or SIGTERM stops it",
            args.front_replicas,
            host,
            port,
        )
        stop.wait()
        logger.info("stopping: removing the front and the deployments this process started")
    finally:
        engine.stop()
    logger.info("stopped")


def _ray_engine(args: argparse.Namespace, config: Config, **front: Any) -> Any:
    """Start (or join) the Ray cluster and deploy the model families (blocks until they run), and
    the front when ``front`` says so (:class:`~multimodal_mcp.cluster.settings.RaySettings` fields)."""
    from multimodal_mcp.cluster.engine import RayEngine
    from multimodal_mcp.cluster.settings import FamilySettings, RaySettings

    settings = RaySettings(
        **front,
        default_family=FamilySettings(max_models_per_replica=args.ray_max_models),
        safety=args.ray_safety,
        address=args.ray_address,
        deploy=not args.ray_deployed,
        only=frozenset(m.strip() for m in args.ray_models.split(",") if m.strip())
        if args.ray_models
        else None,
        call_timeout=args.ray_call_timeout,
        silence_timeout=args.ray_silence_timeout,
        deploy_timeout=args.ray_deploy_timeout,
    )
    engine = RayEngine(config, settings)
    logger.info(
        "engine ray: %s; deploying %s",
        f"joining {settings.address}" if settings.address else "starting a local cluster on loopback",
        ", ".join(engine.plan) or "nothing (no local models)",
    )
    engine.start()
    return engine


def _stop_at_once_on_ctrl_c() -> None:
    """Ctrl-C (SIGINT) ends a stdio server at once.

    Python's default turns it into KeyboardInterrupt, after which the server waits for the thread
    reading stdin, which waits for a line that never comes: the process outlived two Ctrl-Cs. A stdio
    server has nothing to save (images are written as they are made; a client's calls die with its
    connection; a staged input's conversion stays pending in the store's index and is done by the
    next server to open it), so it exits, through the same quick exit as after a normal shutdown.
    """
    import signal

    def stop(signum: int, frame: object) -> None:
        logger.info("interrupted (Ctrl-C): stopping")
        _exit_after_shutdown(130)

    signal.signal(signal.SIGINT, stop)


def _exit_after_shutdown(code: int) -> NoReturn:
    """End the process once the server has shut down, without the interpreter's own teardown.

    By now the lifespan has stopped the pool and closed the hosted clients. What the interpreter
    would still do is free every module: with torch, diffusers and transformers loaded that is 1-2 s
    of CPU after the client closed stdin (or sent SIGTERM), which MCP hosts, the Inspector and the
    test suite wait out at every exit. The exit handlers still run and the streams are flushed.
    """
    import atexit

    atexit._run_exitfuncs()  # logging.shutdown among them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _models(args: argparse.Namespace) -> int:
    from multimodal_mcp import registry
    from multimodal_mcp.config import as_toml

    config = _config_from(args)
    if args.as_toml:
        print(as_toml(config), end="")
        return 0
    defaults: dict[str, list[str]] = {}
    for key, name in config.defaults.items():
        defaults.setdefault(name, []).append(key)
    print(f"profile: {config.profile}")
    for reason in config.profile_reasons:
        print(f"  {reason}")
    print(f"backends: {registry.describe()}")
    for backend in sorted(registry.hosted_backends()):
        settings = config.hosted.for_backend(backend)
        plugin = registry.hosted_backends()[backend]
        status = (
            plugin.key_status(settings)  # which kind of credentials, too
            if plugin.cloud_settings or not settings.key_from
            else f"key from {settings.key_from}"
        )
        print(f"hosted {backend}: {status}, {settings.base_url}")
    from multimodal_mcp.pull import presence

    present = presence(config)
    width = max(24, *(len(name) for name in config.models))
    print(f"{'name':<{width}} {'task':<14} {'backend':<13} {'default for':<26} {'present':<8} source")
    for name, spec in config.models.items():
        here = "-" if name not in present else "yes" if present[name] else "no"
        print(
            f"{name:<{width}} {spec.task:<14} {spec.backend:<13} "
            f"{','.join(defaults.get(name, [])) or '-':<26} {here:<8} {spec.source}"
        )
    missing = [name for name, here in present.items() if not here]
    if missing:
        print(
            f"not downloaded yet: {', '.join(missing)}; `multimodal-mcp pull --profile {config.profile}` "
            "downloads them (or they download on first use)"
        )
    return 0


def _pull(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    from multimodal_mcp.config import ConfigError
    from multimodal_mcp.pull import hub_files, hub_models, plan, pull

    config = _config_from(args)
    models = hub_models(config, args.models)
    if not models:
        print(f"nothing to download: profile {config.profile!r} has no model from the Hugging Face Hub")
        return 0
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "pull downloads from the Hugging Face Hub, but offline mode is on: unset HF_HUB_OFFLINE"
        )
    try:
        downloads = plan(models, hub_files)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"the Hugging Face Hub did not answer ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    pull(downloads, Path(constants.HF_HUB_CACHE))
    return 0


def _build_tiny(args: argparse.Namespace) -> int:
    from multimodal_mcp.backends.tiny import build_tiny_models, ensure_tiny_models

    config = _config_from(args)
    target = args.dir or config.server.tiny_dir
    path = build_tiny_models(target) if args.force else ensure_tiny_models(target)
    print(f"tiny models ready in {path}")
    return 0


def _recover_store(args: argparse.Namespace) -> int:
    from multimodal_mcp.imaging.store import ImageStore

    config = _config_from(args)
    if config.server.store.url is not None:
        print("multimodal-mcp recover-store: an object store has no local index to rebuild", file=sys.stderr)
        return 2
    store = ImageStore(config.server.store_dir, fsync=config.server.store_fsync)
    removed = store.recover()
    print(
        f"image store {config.server.store_dir}: {store.index.count()} image(s), {store.total_bytes} bytes "
        f"indexed; removed {removed['temporary']} temporary file(s), "
        f"{removed['image_without_record']} image(s) without a record, "
        f"{removed['record_without_image']} record(s) without an image"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from multimodal_mcp.demo import DemoError, run_demo

    args.profile = args.profile or "tiny"
    _config_from(args)  # a bad config or profile: one line and exit 2 here, not from the server
    try:
        report = run_demo(
            output_dir=args.output,
            profile=args.profile,
            config_file=args.config,
            store_dir=args.store_dir,
        )
    except DemoError as exc:
        print(f"multimodal-mcp demo: {exc}", file=sys.stderr)
        return 1
    print(f"demo report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multimodal-mcp",
        description=(
            "An MCP server for image generation, ControlNet, CLIP, vision-language models "
            "and image comparison."
        ),
    )
    parser.add_argument("--version", action="version", version=f"multimodal-mcp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server")
    _add_config_options(serve)
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument(
        "--host", help="HTTP bind address (default: server.http.host, 127.0.0.1: loopback only)"
    )
    serve.add_argument("--port", type=int, help="HTTP port (default: server.http.port, 8000)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve HTTP beyond loopback with no authentication (only behind a proxy that authenticates)",
    )
    serve.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="where local models run: 'local' (this process's pool) or 'ray' (Ray Serve deployments, "
        "one per model family; needs the 'ray' extra and --transport http)",
    )
    serve.add_argument(
        "--ray-address", help="with --engine ray: join this cluster (e.g. 'auto'); default: start a local one"
    )
    serve.add_argument(
        "--ray-deployed",
        action="store_true",
        help="with --engine ray: the model families were deployed already (serve deploy, KubeRay); "
        "only connect to them",
    )
    serve.add_argument(
        "--ray-models",
        metavar="NAME,...",
        help="with --engine ray: run only these local models (and their ControlNets and IP-Adapters) on "
        "Ray; the others stay in this process's pool (default: every local model)",
    )
    serve.add_argument(
        "--ray-call-timeout", type=float, default=1800.0, help="seconds a call to a deployment may take"
    )
    serve.add_argument(
        "--ray-silence-timeout",
        type=float,
        default=60.0,
        help="seconds without a word from a replica before its call fails (a lost node)",
    )
    serve.add_argument(
        "--ray-deploy-timeout",
        type=float,
        default=300.0,
        help="seconds deploying may take before an unschedulable deployment is reported",
    )
    serve.add_argument(
        "--ray-max-models",
        type=_models_per_replica,
        metavar="N",
        help="with --engine ray: how many of a family's checkpoints one replica keeps; Serve routes each "
        "model's calls to a replica holding it and evicts the least recently used past N (default: all)",
    )
    serve.add_argument(
        "--ray-safety",
        action="store_true",
        help="with --engine ray: run the safety filter (when [server.safety] turns it on) as a Serve "
        "deployment instead of in the front",
    )
    serve.add_argument(
        "--front-replicas",
        type=_replicas,
        default=0,
        metavar="N",
        help="with --engine ray: run the MCP front itself as N Ray Serve replicas behind Serve's HTTP proxy "
        "at --host/--port (stateless HTTP; default 0: the front runs in this process)",
    )
    serve.add_argument(
        "--job-board-redis",
        metavar="URL",
        help="share jobs with other fronts through Redis (redis://host:6379/0; the 'redis' extra); "
        "with --engine ray they are shared through a Ray actor without it",
    )
    serve.set_defaults(func=_serve)

    models = sub.add_parser("models", help="list the configured models")
    _add_config_options(models)
    models.add_argument(
        "--as-toml",
        action="store_true",
        help="print the models and defaults as a TOML config file to start from (load it with --config)",
    )
    models.set_defaults(func=_models)

    demo = sub.add_parser(
        "demo", help="run generate -> classify -> describe -> compare through a real MCP client"
    )
    _add_config_options(demo, profile_default="'tiny'")
    demo.add_argument("--output", type=Path, default=Path("multimodal-mcp-demo"), help="report directory")
    demo.set_defaults(func=_demo)

    pull = sub.add_parser(
        "pull",
        help="download the Hub models of a profile (or the models named) into the Hugging Face cache",
    )
    _add_config_options(pull)
    pull.add_argument("models", nargs="*", metavar="MODEL", help="configured model names (default: all)")
    pull.set_defaults(func=_pull)

    recover = sub.add_parser(
        "recover-store",
        help="rebuild the image store's index from its files (after editing or deleting files by hand)",
    )
    _add_config_options(recover)
    recover.set_defaults(func=_recover_store)

    tiny = sub.add_parser("build-tiny", help="build the offline tiny models (otherwise built on first use)")
    _add_config_options(tiny)
    tiny.add_argument("--dir", type=Path, help="target directory (default: the configured tiny_dir)")
    tiny.add_argument("--force", action="store_true", help="rebuild even if present")
    tiny.set_defaults(func=_build_tiny)
    return parser


def _started() -> None:
    """The server is built: what the start made (the SDK's and our pydantic models and schemas, about
    200,000 objects that live as long as the process) is frozen out of every later collection, and
    the garbage collector is on again.

    While the start makes them, the collector would traverse them again and again for the few cycles
    among them (about 0.1 s of a 1 s start on 2 cores). It is off from :func:`main`'s first line to
    here; the start's few garbage cycles (a few thousand objects) are frozen with the rest, once.
    """
    gc.freeze()
    gc.enable()


def main(argv: list[str] | None = None) -> None:
    gc.disable()  # until the server is built (serve, see _started); every other command: after parsing
    try:
        args = build_parser().parse_args(argv)
        if args.func is not _serve:
            gc.enable()
        _setup_logging(args.log_level)
        from multimodal_mcp.config import ConfigError

        try:
            code = args.func(args)
        except ConfigError as exc:
            print(f"multimodal-mcp: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            code = 130
    finally:
        gc.enable()
    sys.exit(code)
