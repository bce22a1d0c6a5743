"""Answers as JSON: checking an untrusted JSON Schema, prompting local models for JSON, validating."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from multimodal_mcp.backends.base import json_prompt
from multimodal_mcp.errors import BackendError, InvalidArgument

__all__ = ["MAX_SCHEMA_CHARS", "MAX_SCHEMA_DEPTH", "check_schema", "json_prompt", "parse_answer"]

MAX_SCHEMA_CHARS = 16_000
MAX_SCHEMA_DEPTH = 12


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [str(v) for k, v in value.items() if k in ("$ref", "$dynamicRef")]
        return found + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def check_schema(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for ``schema``, after size, depth, reference and meta-schema checks."""
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise InvalidArgument(
            f"response_schema is {len(text)} characters as JSON; the limit is {MAX_SCHEMA_CHARS}"
        )
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise InvalidArgument(f"response_schema nests deeper than {MAX_SCHEMA_DEPTH} levels; flatten it")
    remote = [ref for ref in _refs(schema) if not ref.startswith("#")]
    if remote:
        raise InvalidArgument(
            f"response_schema may only use local references ('#/...'), not {remote[0][:80]!r}"
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top)"
        raise InvalidArgument(
            f"response_schema is not a valid JSON Schema (2020-12) at {where}: {exc.message[:200]}"
        ) from None
    return Draft202012Validator(schema)


def _first_json(text: str) -> Any:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`")
        stripped = stripped[4:] if stripped.lower().startswith("json") else stripped
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for i, char in enumerate(stripped):
        if char in "{[":
            try:
                return decoder.raw_decode(stripped, i)[0]
            except ValueError:
                continue
    raise ValueError("no JSON value found")


def parse_answer(text: str, validator: Draft202012Validator, model: str) -> Any:
    """The answer's JSON value, validated; the error says what failed, quoting little of the text."""
    begins = text[:160] + ("..." if len(text) > 160 else "")
    try:
        value = _first_json(text)
    except ValueError:
        raise BackendError(
            f"model {model!r} did not answer with JSON for response_schema (its answer began: {begins!r}); "
            "try a larger model, a simpler schema or more max_tokens"
        ) from None
    error = next(iter(sorted(validator.iter_errors(value), key=lambda e: len(list(e.path)))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise BackendError(
            f"model {model!r} answered JSON that does not match response_schema at {where}: "
            f"{error.message[:200]}; try a larger model, a simpler schema or more max_tokens"
        )
    return value
