from __future__ import annotations

from mcp import Client

from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.list_models import ListModelsParams, list_models

from helpers import call_ok


async def test_list_models_shows_tasks_defaults_and_what_is_loaded(client: Client) -> None:
    before = await call_ok(client, "list_models", {})
    models = {m["name"]: m for m in before["models"]}
    assert before["profile"] == "tiny" and before["device"] == "cpu"
    assert set(models) == {
        "tiny-sd15",
        "tiny-sdxl",
        "tiny-flux",
        "tiny-sd3",
        "tiny-lora-ink",
        "tiny-lora-glow",
        "tiny-lora-sd3",
        "tiny-controlnet-canny",
        "tiny-controlnet-depth",
        "tiny-controlnet-canny-sdxl",
        "tiny-controlnet-canny-flux",
        "tiny-controlnet-canny-sd3",
        "tiny-ip-adapter",
        "tiny-clip",
        "tiny-vlm",
        "tiny-text",
        "tiny-owlv2",
        "tiny-depth",
        "tiny-qwen2-vl",
        "tiny-siglip",
    }
    assert models["tiny-text"]["default_for"] == ["prompt_rewrite"] and models["tiny-text"]["task"] == "text"
    assert (models["tiny-owlv2"]["default_for"], models["tiny-owlv2"]["task"]) == (["detector"], "detector")
    assert (models["tiny-depth"]["default_for"], models["tiny-depth"]["task"]) == (["depth"], "depth")
    assert not any(m["paid"] for m in models.values())
    assert models["tiny-sd15"]["default_for"] == ["text_to_image", "controlled"]
    assert models["tiny-flux"]["schedulers"][0] == "flow_euler"
    assert models["tiny-controlnet-canny"]["base_models"] == ["tiny-sd15"]
    assert not any(m["loaded"] for m in before["models"])

    await call_ok(client, "generate_image", {"prompt": "x", "seed": 1})
    after = {m["name"]: m for m in (await call_ok(client, "list_models", {}))["models"]}
    assert after["tiny-sd15"]["loaded"] and after["tiny-sd15"]["device"] == "cpu"
    assert after["tiny-sd15"]["memory_bytes"] > 0
    assert not after["tiny-clip"]["loaded"]


async def test_list_models_with_a_task_shows_only_the_models_of_that_task(fake_services: Services) -> None:
    everything = await list_models(ListModelsParams(), fake_services)
    tasks = {m.task for m in everything.models}
    assert {"vlm", "clip"} <= tasks  # the fake catalog has several tasks, so the filter has work to do
    for task in tasks:
        only = await list_models(ListModelsParams(task=task), fake_services)
        assert [m.name for m in only.models] == [m.name for m in everything.models if m.task == task]
