"""The hub's engine boundary (no Ray): local models go to the engine first, hosted ones never do."""

from __future__ import annotations

from pathlib import Path

from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.cluster.remote import RemoteEmbedder, RemoteImageGenerator
from multimodal_mcp.config import ModelSpec
from multimodal_mcp.handles import Handle, Progress
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.pool.core import ModelPool
from multimodal_mcp.pool.handles import PooledEmbedder

from fake_providers import hosted_config
from helpers import cpu_only


class RecordingCaller:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(
        self,
        model: str,
        method: str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        progress: Progress | None,
    ) -> object:
        self.calls.append((model, method))
        return [0.25, 0.75]


class OneModelEngine:
    """Serves ``tiny-clip`` only, through a recording caller."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.caller = RecordingCaller()

    def handle(self, name: str, spec: ModelSpec, capabilities: Capabilities) -> Handle | None:
        self.asked.append(name)
        return RemoteEmbedder(self.caller, name, capabilities) if name == "tiny-clip" else None

    def location(self, name: str) -> str | None:
        return "ray:clip" if name == "tiny-clip" else None


def _hub(tmp_path: Path, engine: OneModelEngine) -> ModelHub:
    config = hosted_config(
        tmp_path,
        tmp_path / "no-tiny-models",
        tmp_path,
        openai_url="http://127.0.0.1:9/v1",
        gemini_url="http://127.0.0.1:9/",
        anthropic_url="http://127.0.0.1:9",
    )
    return ModelHub(config, ModelPool(config, cpu_only()), HostedConnections(config.hosted), engine)


async def test_a_local_model_the_engine_serves_gets_its_remote_handle_and_calls_go_there(
    tmp_path: Path,
) -> None:
    from PIL import Image

    engine = OneModelEngine()
    hub = _hub(tmp_path, engine)
    embedder = hub.embedder("tiny-clip")
    assert isinstance(embedder, RemoteEmbedder)
    assert await embedder.classify(Image.new("RGB", (8, 8)), ["a", "b"]) == [0.25, 0.75]
    assert engine.caller.calls == [("tiny-clip", "classify")]
    assert hub.where("tiny-clip")["location"] == "ray:clip"


async def test_a_local_model_the_engine_leaves_runs_in_the_pool_and_hosted_models_never_ask(
    tmp_path: Path,
) -> None:
    engine = OneModelEngine()
    hub = _hub(tmp_path, engine)
    assert not isinstance(hub.image_generator("tiny-sd15"), RemoteImageGenerator)
    hosted = [
        name for name, spec in hub.config.models.items() if spec.hosted and spec.task == "text_to_image"
    ]
    hub.image_generator(hosted[0])
    assert hosted[0] not in engine.asked and "tiny-sd15" in engine.asked
    assert hub.where("tiny-sd15")["status"] == "not loaded"
    assert isinstance(ModelHub(hub.config, hub.pool, hub.connections).embedder("tiny-clip"), PooledEmbedder)
