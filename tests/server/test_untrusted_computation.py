"""Issue 13, item 1: computation on client-supplied data (response_schema patterns, $ref recursion,
deep JSON answers) is bounded in time and depth, runs off the event loop, and ends in curated errors."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client

from multimodal_mcp.errors import BackendError, InvalidArgument
from multimodal_mcp.server.app import build_server
from multimodal_mcp.tools import json_answer
from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.json_answer import check_schema, parse_answer

from fake_hub import FakeHub, FakeVisionChat
from helpers import call_error, call_ok, data_uri, photo

# The issue's example: Python's re takes about 20 s for 29 'a's and a '!', doubling per character.
NESTED_QUANTIFIER = {"type": "string", "pattern": "^(a+)+$"}
# A pattern that backtracks in every engine that supports alternation: used to reach the time limit.
ALTERNATION = {"type": "string", "pattern": "^(a|aa)+$"}


def test_the_issues_nested_quantifier_pattern_is_answered_with_a_mismatch_not_a_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python's re needs about 20 s here; an engine that backtracked would end in the time-limit error.
    monkeypatch.setattr(json_answer, "VALIDATION_SECONDS", 1.0)
    with pytest.raises(BackendError, match="does not match '\\^\\(a\\+\\)\\+\\$'"):
        parse_answer('"' + "a" * 29 + '!"', check_schema(NESTED_QUANTIFIER), "m")
    assert parse_answer('"' + "a" * 29 + '"', check_schema(NESTED_QUANTIFIER), "m") == "a" * 29


def test_a_pattern_that_backtracks_past_the_budget_ends_in_a_curated_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(json_answer, "VALIDATION_SECONDS", 0.2)
    with pytest.raises(InvalidArgument, match=r"took over 0.2 s .*simplify its patterns"):
        parse_answer('"' + "a" * 60 + '!"', check_schema(ALTERNATION), "m")


@pytest.mark.parametrize(
    "schema",
    [  # the issue's example first
        {"$ref": "#"},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {"allOf": [{"$ref": "#"}]},
    ],
)
def test_a_schema_whose_ref_points_to_itself_is_refused_with_a_curated_error(schema: Any) -> None:
    with pytest.raises(InvalidArgument, match="refers to itself without end"):
        check_schema(schema)


def test_a_recursive_schema_with_a_base_case_still_works_and_an_answer_too_deep_is_curated() -> None:
    tree = check_schema({"type": "object", "properties": {"child": {"$ref": "#"}}})
    assert parse_answer('{"child": {"child": {}}}', tree, "m") == {"child": {"child": {}}}
    deep = '{"child": ' * 5000 + "{}" + "}" * 5000
    with pytest.raises(InvalidArgument, match="recursed deeper"):
        parse_answer(deep, tree, "m")


def test_a_pattern_the_engine_cannot_compile_is_refused_up_front() -> None:
    with pytest.raises(InvalidArgument, match="does not compile"):
        check_schema({"type": "string", "pattern": "(unclosed"})


@pytest.mark.anyio
async def test_another_clients_list_models_is_answered_while_a_slow_validation_runs(
    fake_services: Services, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's 20 s freeze: validation ran on the event loop, so list_models waited for it."""
    monkeypatch.setattr(json_answer, "VALIDATION_SECONDS", 3.0)
    answered = anyio.Event()
    vlm = fake_hub.fakes["fake-vlm"]
    assert isinstance(vlm, FakeVisionChat)

    def reply(_: Any) -> str:
        answered.set()  # the model has answered: validation starts next
        return '"' + "a" * 60 + '!"'

    vlm.reply = reply
    finished: list[str] = []
    server = build_server(fake_services.config, fake_services)
    async with Client(server) as slow, Client(server) as other, anyio.create_task_group() as tg:

        async def describe() -> None:
            message = await call_error(
                slow, "describe_image", {"image": data_uri(photo(size=64)), "response_schema": ALTERNATION}
            )
            finished.append(message)

        tg.start_soon(describe)
        with anyio.fail_after(30):
            await answered.wait()
        with anyio.fail_after(2.5):  # well inside the 3 s the validation runs for
            models = await call_ok(other, "list_models", {})
        assert models["models"] and not finished  # answered while the validation was still running
    assert "took over 3 s" in finished[0]
