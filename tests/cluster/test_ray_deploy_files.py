"""The deployment files in docs/ray: Serve accepts the config, and its names are the front's.

Marker ``ray`` (imports Ray Serve's schema; starts no cluster).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multimodal_mcp.cluster.engine import app_name, local_models
from multimodal_mcp.cluster.families import plan
from multimodal_mcp.cluster.settings import RaySettings
from multimodal_mcp.config import load_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(60)]

DOCS = Path(__file__).parents[2] / "docs" / "ray"


def _default_plan(tmp_path: Path) -> dict[str, list[str]]:
    config = load_config(profile="default", cache_dir=tmp_path / "cache", home=tmp_path)
    return plan(config, RaySettings(), local=local_models(config))


def _serve_config() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DOCS / "serve-config.yaml").read_text())


def test_the_serve_config_is_valid_for_serve_deploy() -> None:
    schema = pytest.importorskip("ray.serve.schema")
    schema.ServeDeploySchema.model_validate(_serve_config())


def test_the_serve_config_deploys_every_family_of_the_default_profile_under_the_fronts_names(
    tmp_path: Path,
) -> None:
    families = _default_plan(tmp_path)
    apps = {app["name"]: app for app in _serve_config()["applications"]}
    assert set(apps) == {app_name(RaySettings(), family) for family in families}
    for family in families:
        app = apps[app_name(RaySettings(), family)]
        assert app["args"]["family"] == family
        assert [d["name"] for d in app["deployments"]] == [family]


def test_the_rayservice_manifest_carries_the_same_serve_config() -> None:
    documents = list(yaml.safe_load_all((DOCS / "rayservice.yaml").read_text()))
    service = next(d for d in documents if d["kind"] == "RayService")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == _serve_config()


def test_the_application_builder_refuses_a_family_the_config_does_not_have() -> None:
    pytest.importorskip("ray.serve")
    from multimodal_mcp.cluster.apps import family_app

    with pytest.raises(ValueError, match=r"its families: .*sdxl"):
        family_app({"family": "nope", "profile": "default"})


def test_the_application_builder_refuses_a_max_models_per_replica_that_is_not_a_positive_integer() -> None:
    pytest.importorskip("ray.serve")
    from multimodal_mcp.cluster.apps import family_app

    with pytest.raises(ValueError, match=r"max_models_per_replica must be a positive integer, got 0; e\.g\."):
        family_app({"family": "vlm", "profile": "default", "max_models_per_replica": 0})


def test_the_serve_config_gives_each_vlm_a_replica_of_its_own(tmp_path: Path) -> None:
    """One model per replica swaps models on every other call unless there are as many replicas."""
    vlm = next(a for a in _serve_config()["applications"] if a["args"]["family"] == "vlm")
    assert vlm["args"]["max_models_per_replica"] == 1
    assert vlm["deployments"][0]["num_replicas"] == len(_default_plan(tmp_path)["vlm"])
