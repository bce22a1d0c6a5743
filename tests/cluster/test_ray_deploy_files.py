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
    front = app_name(RaySettings(), "front")
    assert set(apps) == {app_name(RaySettings(), family) for family in families} | {front}
    assert apps[front]["import_path"] == "multimodal_mcp.cluster.apps:front_app"
    assert [d["name"] for d in apps[front]["deployments"]] == ["front"]
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


def test_the_front_builder_refuses_to_serve_beyond_loopback_without_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("ray.serve")
    from multimodal_mcp.cluster.apps import front_app
    from multimodal_mcp.config import ConfigError

    monkeypatch.delenv("MULTIMODAL_MCP_TOKENS", raising=False)
    with pytest.raises(ConfigError, match="without authentication"):
        front_app({"profile": "tiny", "host": "0.0.0.0"})


def test_the_front_builder_takes_the_tokens_and_the_allowed_hosts_it_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("ray.serve")
    from multimodal_mcp.cluster.apps import front_app
    from multimodal_mcp.cluster.front import REQUEST_STATE_KEY_ENV

    monkeypatch.setenv("MULTIMODAL_MCP_TOKENS", "alice:" + "a" * 32)
    monkeypatch.setenv(REQUEST_STATE_KEY_ENV, "k" * 40)
    app = front_app({"profile": "tiny", "host": "0.0.0.0", "allowed_hosts": ["mcp.example.com:8000"]})
    config, _settings, host, key, _redis = app._bound_deployment.init_args  # what each replica gets
    assert host == "0.0.0.0" and key == b"k" * 40
    assert [t.principal for t in config.server.http.auth.tokens] == ["alice"]
    assert "mcp.example.com:8000" in config.server.http.allowed_hosts
