"""Prompt weights a model does not read: the result says they were taken as plain text and names
the models that read them (the fake hub, no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.generate_image import GenerateImageParams, generate_image

from fake_hub import MODELS, FakeImageGenerator, fake_config, fake_handles, fake_services_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def services(tmp_path: Path, allowed_root: Path) -> Services:
    # fake-sd reads weights (as SD 1.5 with compel does); fake-hosted does not.
    models = {**MODELS, "fake-sd": {**MODELS["fake-sd"], "capabilities": {"prompt_weighting": True}}}
    return fake_services_for(fake_config(tmp_path, allowed_root, models=models), fake_handles())


def _notes(result: object) -> list[str]:
    return [a.message for a in result.adjustments if a.argument == "prompt"]  # type: ignore[attr-defined]


async def test_weights_a_model_does_not_read_are_reported_as_plain_text_naming_the_models_that_do(
    services: Services,
) -> None:
    prompt = "a (red umbrella:1.4) in (fog:0.7)"
    result = await generate_image(GenerateImageParams(prompt=prompt, model="fake-hosted"), services)
    (note,) = _notes(result)
    assert "'(red umbrella:1.4)', '(fog:0.7)' were read as plain text" in note
    assert "model 'fake-hosted' does not read prompt weights" in note
    assert "(capabilities.prompt_weighting): fake-sd" in note
    handle = services.hub.handle("fake-hosted")
    assert isinstance(handle, FakeImageGenerator) and handle.requests[-1].prompt == prompt  # as written


async def test_no_note_where_the_model_reads_weights_or_the_prompt_has_none(services: Services) -> None:
    weighted = await generate_image(GenerateImageParams(prompt="a (red umbrella:1.4)"), services)
    assert _notes(weighted) == []  # fake-sd reads them
    # Parentheses without a weight, and a time of day, are not weights.
    plain = await generate_image(
        GenerateImageParams(prompt="a (black) cat at (10:30 am)", model="fake-hosted"), services
    )
    assert _notes(plain) == []
