"""Which deployment serves which model (no Ray, no torch)."""

from __future__ import annotations

from pathlib import Path

from multimodal_mcp.cluster.families import SAFETY, plan
from multimodal_mcp.cluster.settings import RaySettings
from multimodal_mcp.config import load_config
from multimodal_mcp.server_settings import SafetySettings


def _tiny_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_config(
        profile="tiny", cache_dir=tmp_path / "cache", home=tmp_path, overrides={"tiny_dir": tmp_path / "t"}
    )


def test_each_text_to_image_model_is_a_family_with_the_components_that_attach_to_it(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    local = set(config.models)
    found = plan(config, RaySettings(), local=local)
    assert found["tiny-sd15"][0] == "tiny-sd15"
    assert {"tiny-controlnet-canny", "tiny-controlnet-depth", "tiny-ip-adapter"} <= set(found["tiny-sd15"])
    assert "tiny-controlnet-canny-sdxl" in found["tiny-sdxl"]
    assert "tiny-controlnet-canny-sdxl" not in found["tiny-sd15"]
    assert found["clip"] == ["tiny-clip", "tiny-siglip"]  # CLIP and SigLIP share one deployment
    assert "tiny-vlm" in found["vlm"]
    assert found["depth"] == ["tiny-depth"]  # depth maps from photos: a deployment, not the front
    served = [model for models in found.values() for model in models]
    assert len(served) == len(set(served)), "a model is in one deployment unless shared by bases"


def test_assign_groups_models_and_only_keeps_the_rest_in_the_front(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    settings = RaySettings(
        assign={"tiny-sd15": "gen", "tiny-clip": "gen"}, only=frozenset({"tiny-sd15", "tiny-clip"})
    )
    found = plan(config, settings, local=set(config.models))
    assert set(found) == {"gen"}
    assert {"tiny-sd15", "tiny-clip", "tiny-controlnet-canny"} <= set(found["gen"])
    assert "tiny-vlm" not in found["gen"]


def test_hosted_models_are_never_deployed(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    found = plan(config, RaySettings(), local={"tiny-clip"})
    assert found == {"clip": ["tiny-clip"]}


def test_the_safety_filter_is_a_deployment_only_when_asked_and_on(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    on = config.model_copy(
        update={"server": config.server.model_copy(update={"safety": SafetySettings(filter="on")})}
    )
    assert "safety" not in plan(on, RaySettings(), local=set())
    assert plan(on, RaySettings(safety=True), local=set()) == {"safety": [SAFETY]}
    assert "safety" not in plan(config, RaySettings(safety=True), local=set()), "a filter that is off"
