"""Paid calls are confirmed with the user through MCP elicitation before any work is done."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import pytest
from mcp import Client
from mcp.types import ElicitResult

from multimodal_mcp.config import Config, SpendingSettings
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.common import Services

from helpers import call_error, call_ok, cpu_only, data_uri, photo

# "auto" speaks the current protocol (questions come back as InputRequiredResult rounds); "legacy"
# the handshake-era one (the server sends elicitation/create in the middle of the call).
MODES = ["auto", "legacy"]
Action = Literal["accept", "decline", "cancel"]
pytestmark = pytest.mark.anyio  # marked at collection, so that parametrized tests keep their ids


def with_spending(config: Config, paid: tuple[str, ...] = (), **spending: Any) -> Config:
    models = {
        name: spec.model_copy(update={"paid": True}) if name in paid else spec
        for name, spec in config.models.items()
    }
    server = config.server.model_copy(update={"spending": SpendingSettings(**spending)})
    return config.model_copy(update={"models": models, "server": server})


class User:
    """An elicitation callback that answers every question the same way and remembers them."""

    def __init__(self, action: Action = "accept", approve: bool = True) -> None:
        self.action = action
        self.approve = approve
        self.questions: list[str] = []
        self.delay = 0.0

    async def __call__(self, context: Any, params: Any) -> ElicitResult:
        self.questions.append(params.message)
        assert params.requested_schema["type"] == "object"
        await anyio.sleep(self.delay)
        content = {"approve": self.approve} if self.action == "accept" else None
        return ElicitResult(action=self.action, content=content)


@asynccontextmanager
async def connect(
    config: Config, user: User | None, mode: str = "auto"
) -> AsyncIterator[tuple[Client, Services]]:
    services = create_services(config, devices=cpu_only())
    server = build_server(config, services)
    async with Client(server, elicitation_callback=user, mode=mode) as client:  # type: ignore[arg-type]
        yield client, services


def stored_generated(services: Services) -> list[str]:
    records = (json.loads(p.read_text()) for p in services.store.root.glob("*/*.json"))
    return [r["id"] for r in records if r["kind"] == "generated"]


@pytest.mark.parametrize("mode", MODES)
async def test_an_accepted_confirmation_runs_the_paid_call(config: Config, mode: str) -> None:
    user = User("accept")
    async with connect(with_spending(config, ("tiny-sd15",)), user, mode) as (client, services):
        out = await call_ok(client, "generate_image", {"prompt": "a kite", "seed": 1, "num_images": 2})
    assert user.questions == [
        "generate_image wants to make a paid call to tiny-sd15 (diffusers): 2 images of 64x64. Allow it?"
    ]
    assert sorted(stored_generated(services)) == sorted(img["id"] for img in out["images"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_a_declined_or_cancelled_confirmation_is_an_error_and_spends_nothing(
    config: Config, mode: str, action: Literal["decline", "cancel"]
) -> None:
    user = User(action)
    async with connect(with_spending(config, ("tiny-sd15",)), user, mode) as (client, services):
        message = await call_error(client, "generate_image", {"prompt": "a kite", "seed": 1})
        verb = {"decline": "declined", "cancel": "cancelled"}[action]
        assert f"the user {verb} the paid call to tiny-sd15 (1 image of 64x64)" in message
        assert "nothing was spent" in message
        assert stored_generated(services) == [] and not services.pool.is_loaded("tiny-sd15")
        # The server keeps serving, and free models still run without a question.
        await call_ok(client, "clip_classify", {"image": data_uri(photo("coffee", 32)), "labels": ["a", "b"]})
    assert len(user.questions) == 1


async def test_accepting_the_form_with_approve_false_counts_as_declining(config: Config) -> None:
    async with connect(with_spending(config, ("tiny-sd15",)), User("accept", approve=False)) as (client, _):
        assert "declined" in await call_error(client, "generate_image", {"prompt": "a kite"})


@pytest.mark.parametrize(
    ("default", "allowed"), [("allow", True), ("deny", False)], ids=["default-allow", "default-deny"]
)
async def test_a_client_without_elicitation_gets_the_configured_default(
    config: Config, default: Literal["allow", "deny"], allowed: bool
) -> None:
    paid = with_spending(config, ("tiny-sd15",), default_without_elicitation=default)
    async with connect(paid, None) as (client, services):
        result = await client.call_tool("generate_image", {"prompt": "a kite", "seed": 1})
        assert result.is_error is not allowed
        if not allowed:
            text = " ".join(getattr(block, "text", "") for block in result.content)
            assert "server.spending.default_without_elicitation = 'deny'" in text
        assert len(stored_generated(services)) == (1 if allowed else 0)


async def test_the_default_without_elicitation_is_to_allow() -> None:
    assert SpendingSettings().confirm == "ask" and SpendingSettings().default_without_elicitation == "allow"


async def test_confirm_allow_never_asks(config: Config) -> None:
    user = User("decline")
    async with connect(with_spending(config, ("tiny-sd15",), confirm="allow"), user) as (client, services):
        await call_ok(client, "generate_image", {"prompt": "a kite", "seed": 1})
    assert user.questions == [] and len(stored_generated(services)) == 1


async def test_confirm_deny_refuses_paid_calls_without_asking(config: Config) -> None:
    user = User("accept")
    async with connect(with_spending(config, ("tiny-sd15",), confirm="deny"), user) as (client, services):
        message = await call_error(client, "generate_image", {"prompt": "a kite"})
    assert "server.spending.confirm = 'deny'" in message
    assert user.questions == [] and stored_generated(services) == []


@pytest.mark.parametrize("mode", MODES)
async def test_local_models_never_ask(config: Config, mode: str) -> None:
    user = User("decline")
    image = data_uri(photo("coffee", 32))
    async with connect(config, user, mode) as (client, _):
        await call_ok(client, "generate_image", {"prompt": "a kite", "enhance_prompt": True})
        await call_ok(client, "describe_image", {"image": image})
        await call_ok(client, "clip_classify", {"image": image, "labels": ["a", "b"]})
        await call_ok(client, "compare_images", {"image_a": image, "image_b": image, "describe": True})
    assert user.questions == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_paid_rewrite_model_and_a_paid_image_model_are_both_confirmed_before_work(
    config: Config, mode: str
) -> None:
    user = User("accept")
    paid = with_spending(config, ("tiny-sd15", "tiny-text"))
    async with connect(paid, user, mode) as (client, services):
        out = await call_ok(client, "generate_image", {"prompt": "a kite", "enhance_prompt": True})
        assert out["prompt_rewrite"]["model"] == "tiny-text"
        assert services.pool.load_counts == {"tiny-text": 1, "tiny-sd15": 1}  # each ran once
    assert [q.split(":")[0] for q in user.questions] == [
        "generate_image wants to make a paid call to tiny-sd15 (diffusers)",
        "generate_image wants to make a paid call to tiny-text (transformers)",
    ]
    assert "one chat completion (up to 24 tokens) to rewrite the prompt" in user.questions[1]


async def test_declining_the_paid_rewrite_makes_no_image(config: Config) -> None:
    class DeclineText(User):
        async def __call__(self, context: Any, params: Any) -> ElicitResult:
            await super().__call__(context, params)
            if "tiny-text" in params.message:
                return ElicitResult(action="decline")
            return ElicitResult(action="accept", content={"approve": True})

    paid = with_spending(config, ("tiny-sd15", "tiny-text"))
    async with connect(paid, DeclineText()) as (client, services):
        message = await call_error(client, "generate_image", {"prompt": "a kite", "enhance_prompt": True})
        assert "declined the paid call to tiny-text (one chat completion" in message
        assert stored_generated(services) == [] and services.pool.load_counts == {}


@pytest.mark.parametrize("mode", MODES)
async def test_describe_and_classify_confirm_their_paid_models(config: Config, mode: str) -> None:
    user = User("accept")
    image = data_uri(photo("coffee", 32))
    async with connect(with_spending(config, ("tiny-vlm", "tiny-clip")), user, mode) as (client, _):
        await call_ok(client, "describe_image", {"image": image, "max_tokens": 8})
        await call_ok(client, "clip_classify", {"image": image, "labels": ["a", "b", "c"]})
        await call_ok(client, "compare_images", {"image_a": image, "image_b": image, "describe": True})
    assert user.questions == [
        "describe_image wants to make a paid call to tiny-vlm (transformers): one answer about an image "
        "(up to 8 tokens). Allow it?",
        "clip_classify wants to make a paid call to tiny-clip (transformers): one classification of an "
        "image over 3 labels. Allow it?",
        "compare_images wants to make a paid call to tiny-clip (transformers): image embeddings of 2 images. "
        "Allow it?",
        "compare_images wants to make a paid call to tiny-vlm (transformers): one answer comparing two "
        "images (up to 16 tokens). Allow it?",
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_a_slow_answer_does_not_turn_the_call_into_a_job(config: Config, mode: str) -> None:
    user = User("accept")
    user.delay = 1.5
    paid = with_spending(config, ("tiny-sd15",))
    pool = paid.server.pool.model_copy(update={"job_wait_seconds": 1.0})
    paid = paid.model_copy(update={"server": paid.server.model_copy(update={"pool": pool})})
    async with connect(paid, user, mode) as (client, services):
        async with services.pool.use("tiny-sd15"):
            pass  # loaded now: only the confirmation could outlast the wait
        out = await call_ok(client, "generate_image", {"prompt": "a kite", "seed": 1, "steps": 1})
    assert "images" in out and "job" not in out and len(user.questions) == 1
