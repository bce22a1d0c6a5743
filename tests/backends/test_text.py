from __future__ import annotations

from pathlib import Path

from multimodal_mcp import registry
from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.config import Config


def test_the_tiny_text_model_loads_through_the_registry_and_completes_deterministically(
    config: Config, tiny_dir: Path
) -> None:
    spec = config.models["tiny-text"]
    backend = registry.get(spec.backend)
    assert isinstance(backend, registry.LocalBackend)
    model = backend.load("tiny-text", spec, LoadContext("cpu", tiny_dir))
    chat = model._chat("Rewrite prompts.", "a red fox")
    assert chat.startswith("SYSTEM: Rewrite prompts.\nUSER: a red fox\n") and chat.endswith("ASSISTANT:")
    first = model.complete("Rewrite prompts.", "a red fox", 12)
    assert first == model.complete("Rewrite prompts.", "a red fox", 12)
    text, tokens = first
    assert 0 < tokens <= 12 and text.isprintable()
    assert model.complete("Rewrite prompts.", "a blue boat", 12) != first
    assert model.memory_bytes() > 0
