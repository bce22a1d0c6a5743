from __future__ import annotations

import pytest

from multimodal_mcp.errors import BackendError, InvalidArgument
from multimodal_mcp.tools.json_answer import MAX_SCHEMA_DEPTH, check_schema, json_prompt, parse_answer

RECEIPT = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "date": {"type": "string"}},
    "required": ["total", "date"],
}


@pytest.mark.parametrize(
    "text",
    [
        '{"total": 9.5, "date": "2024-01-02"}',
        '```json\n{"total": 9.5, "date": "2024-01-02"}\n```',
        'Sure! Here it is: {"total": 9.5, "date": "2024-01-02"} Hope that helps.',
    ],
)
def test_a_json_answer_is_found_parsed_and_validated(text: str) -> None:
    assert parse_answer(text, check_schema(RECEIPT), "m") == {"total": 9.5, "date": "2024-01-02"}


def test_an_answer_that_does_not_validate_says_where_without_dumping_it() -> None:
    with pytest.raises(BackendError) as info:
        parse_answer('{"total": "ten", "date": "x"}' + " " * 5000 + "z" * 5000, check_schema(RECEIPT), "m")
    assert "at total: 'ten' is not of type 'number'" in str(info.value)
    with pytest.raises(BackendError, match="did not answer with JSON") as info:
        parse_answer("no json here " * 1000, check_schema(RECEIPT), "m")
    assert len(str(info.value)) < 500


def test_schemas_are_limited_in_size_depth_and_references() -> None:
    deep: dict = {"type": "object"}  # type: ignore[type-arg]
    for _ in range(MAX_SCHEMA_DEPTH):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidArgument, match="nests deeper"):
        check_schema(deep)
    with pytest.raises(InvalidArgument, match="characters as JSON; the limit is"):
        check_schema({"enum": ["x" * 100] * 200})
    with pytest.raises(InvalidArgument, match="local references"):
        check_schema({"properties": {"a": {"$ref": "http://169.254.169.254/latest"}}})
    local = check_schema({"$defs": {"n": {"type": "number"}}, "properties": {"a": {"$ref": "#/$defs/n"}}})
    assert local.is_valid({"a": 1}) and not local.is_valid({"a": "x"})
    with pytest.raises(InvalidArgument, match="not a valid JSON Schema"):
        check_schema({"type": 12})


def test_the_local_prompt_carries_the_schema_and_asks_for_json_only() -> None:
    prompt = json_prompt("Extract the total.", RECEIPT)
    assert prompt.startswith("Extract the total.") and '"required":["total","date"]' in prompt
    assert "only a JSON value" in prompt
