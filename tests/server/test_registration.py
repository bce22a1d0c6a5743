"""Tool registration: a tool's params know which arguments the client sent, argument errors read as
sentences, and the input schema is the params model's."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import pytest
from mcp import Client
from pydantic import Field

from multimodal_mcp.config import Config
from multimodal_mcp.errors import NotFound
from multimodal_mcp.server import app
from multimodal_mcp.server.app import build_server
from multimodal_mcp.server.registration import Implementation, MultimodalServer, register_tool
from multimodal_mcp.server.rendering import RenderOptions
from multimodal_mcp.server.schemas import portable_input_schema
from multimodal_mcp.tools.clip_classify import ClipClassifyParams
from multimodal_mcp.tools.common import Params, Progress, Result, Services
from multimodal_mcp.tools.compare_images import CompareImagesParams
from multimodal_mcp.tools.controlled_generate import ControlledGenerateParams
from multimodal_mcp.tools.describe_image import DescribeImageParams
from multimodal_mcp.tools.generate_image import GenerateImageParams
from multimodal_mcp.tools.jobs import CancelJobParams, GetJobParams
from multimodal_mcp.tools.list_models import ListModelsParams

from fake_hub import fake_config, fake_handles, fake_services_for
from helpers import call_error, call_ok

pytestmark = pytest.mark.anyio  # marked at collection, so that parametrized tests keep their ids


class EchoParams(Params):
    text: Annotated[str, Field(max_length=20, description="Any text.")]
    count: Annotated[int, Field(ge=1, le=5, description="How many.")] = 1
    note: Annotated[str | None, Field(max_length=20, description="A note.")] = None
    tags: Annotated[list[str] | None, Field(max_length=3, description="Tags.")] = None


class EchoResult(Result):
    given: list[str]
    count: int

    def summary(self) -> str:
        return "given: " + ", ".join(self.given)


def _echo_server(
    config: Config, services: Services, *, as_job: bool
) -> tuple[MultimodalServer, list[Params]]:
    seen: list[Params] = []

    async def echo(params: EchoParams, services: Services, progress: Progress | None) -> EchoResult:
        """Echoes the arguments it was given."""
        seen.append(params)
        return EchoResult(given=sorted(params.model_fields_set), count=params.count)

    server = MultimodalServer(name="echo-test")
    register_tool(
        server,
        config,
        lambda ctx: services,
        echo,
        EchoParams,
        EchoResult,
        title="Echo",
        read_only=True,
        as_job=as_job,
    )
    return server, seen


@pytest.mark.parametrize("as_job", [False, True])
async def test_a_tool_sees_exactly_the_arguments_the_client_sent(
    config: Config, services: Services, as_job: bool
) -> None:
    server, seen = _echo_server(config, services, as_job=as_job)
    async with services.pool.running(), Client(server) as client:
        cases: list[tuple[dict[str, Any], set[str]]] = [
            ({"text": "hi"}, {"text"}),
            ({"text": "hi", "count": 1}, {"text", "count"}),  # given, though equal to the default
            ({"text": "hi", "note": None}, {"text", "note"}),  # an explicit null is given too
            ({"text": "hi", "tags": '["a", "b"]'}, {"text", "tags"}),  # the SDK decodes JSON strings
        ]
        for arguments, given in cases:
            out = await call_ok(client, "echo", arguments)
            assert set(out["given"]) == given, arguments
            assert seen[-1].model_fields_set == given, arguments
        assert isinstance(seen[-1], EchoParams) and seen[-1].tags == ["a", "b"] and seen[-1].count == 1
        assert len(seen) == len(cases)


async def test_argument_errors_read_as_sentences_and_unknown_arguments_are_refused(
    config: Config, services: Services
) -> None:
    server, seen = _echo_server(config, services, as_job=False)
    async with Client(server) as client:
        assert await call_error(client, "echo", {"text": "hi", "colour": "red"}) == (
            "Invalid arguments for echo: unknown argument(s) 'colour'; accepted: count, note, tags, text"
        )
        assert await call_error(client, "echo", {"text": "hi", "count": 9}) == (
            "Invalid arguments for echo: count: Input should be less than or equal to 5. "
            "See the tool's input schema for the bounds."
        )
        assert await call_error(client, "echo", {}) == (
            "Invalid arguments for echo: text: Field required. See the tool's input schema for the bounds."
        )
    assert seen == []


async def test_the_real_tools_see_which_arguments_were_sent(
    config: Config, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Params] = []

    def spy(implementation: Implementation) -> Implementation:
        @functools.wraps(implementation)
        async def recording(params: Any, services: Services, progress: Progress | None) -> Result:
            seen.append(params)
            if isinstance(params, GenerateImageParams):
                raise NotFound("stopped by the test before any work")
            return await implementation(params, services, progress)

        return recording

    monkeypatch.setattr(app, "get_job", spy(app.get_job))
    monkeypatch.setattr(app, "generate_image", spy(app.generate_image))
    async with Client(build_server(config, services)) as client:
        job_id = "0" * 16
        assert "no job" in await call_error(client, "get_job", {"job_id": job_id})
        assert seen[-1].model_fields_set == {"job_id"}
        assert "no job" in await call_error(client, "get_job", {"job_id": job_id, "wait_seconds": 30})
        assert seen[-1].model_fields_set == {"job_id", "wait_seconds"}
        # delivery is the server layer's; the tool's params hold only their own arguments
        arguments = {"prompt": "a kite", "steps": 2, "delivery": "none"}
        assert "stopped by the test" in await call_error(client, "generate_image", arguments)
        assert seen[-1].model_fields_set == {"prompt", "steps"}


PARAMS = {
    "generate_image": GenerateImageParams,
    "controlled_generate": ControlledGenerateParams,
    "clip_classify": ClipClassifyParams,
    "describe_image": DescribeImageParams,
    "compare_images": CompareImagesParams,
    "list_models": ListModelsParams,
    "get_job": GetJobParams,
    "cancel_job": CancelJobParams,
}


async def test_each_input_schema_is_its_params_model_schema(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == set(PARAMS)
    options = RenderOptions.model_json_schema()
    for name, params_model in PARAMS.items():
        schema = tools[name].input_schema
        expected = params_model.model_json_schema()
        if name in ("generate_image", "controlled_generate", "compare_images", "get_job"):
            # delivery: for tools whose results show images
            expected["properties"] = {**expected["properties"], **options["properties"]}
        # As clients get it: in the portable form every converter takes (server/schemas.py).
        expected = portable_input_schema(expected)
        assert schema["type"] == "object", name
        assert schema["properties"] == expected["properties"], name
        assert schema.get("required", []) == expected.get("required", []), name


async def test_a_width_past_the_schemas_bound_names_the_servers_max_side(
    tmp_path: Path, allowed_root: Path
) -> None:
    config = fake_config(tmp_path, allowed_root, limits={"max_side": 1020})
    services = fake_services_for(config, fake_handles())
    async with Client(build_server(config, services)) as client:
        wide = await call_error(client, "generate_image", {"prompt": "a fox", "width": 8192})
        tall = await call_error(client, "controlled_generate", {"prompt": "a fox", "height": 5000})
    # Only this server's limit is named (the schema's 4096 would be a second, wrong suggestion).
    assert "width: at most 1016 on this server (its max_side setting): use width=1016 or less" in wide
    assert "height: at most 1016 on this server (its max_side setting): use height=1016 or less" in tall
    assert "4096" not in wide + tall


async def test_steps_past_the_schemas_bound_name_the_servers_max_steps_in_one_try(
    tmp_path: Path, allowed_root: Path
) -> None:
    """The schema allows 200 steps; a server that takes 100 says 100 at once, not 200 then 100."""
    config = fake_config(tmp_path, allowed_root)
    services = fake_services_for(config, fake_handles())
    async with Client(build_server(config, services)) as client:
        refused = await call_error(client, "generate_image", {"prompt": "a fox", "steps": 300})
        assert "steps: at most 100 on this server (its max_steps setting): use steps=100 or less" in refused
        suggested = await client.call_tool("generate_image", {"prompt": "a fox", "steps": 100})
    assert not suggested.is_error, suggested.content


async def test_a_malformed_job_id_is_described_in_words_not_as_a_regular_expression(
    fake_services: Services,
) -> None:
    async with Client(build_server(fake_services.config, fake_services)) as client:
        for tool in ("get_job", "cancel_job"):
            message = await call_error(client, tool, {"job_id": "../../etc"})
            assert (
                "job_id: must be a job id as its job handle gives it: 16 hexadecimal digits (0-9, a-f)"
                in message
            )
            assert "pattern" not in message and "[0-9a-f]" not in message and "../../etc" not in message
