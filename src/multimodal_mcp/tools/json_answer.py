"""Answers as JSON: checking an untrusted JSON Schema, prompting local models for JSON, validating.

The schema comes from the client and the answer from a model it may steer, so every step is bounded:
size and depth up front, a time budget for the whole validation (``VALIDATION_SECONDS``), patterns
matched by the ``regex`` engine with a timeout (Python's ``re`` backtracks without end on
``^(a+)+$``), and a ``$ref`` cycle ends in a curated error instead of a RecursionError. The functions
here block: callers run them off the event loop (:func:`check_schema_off_loop`,
:func:`parse_answer_off_loop`). ``jsonschema`` and ``regex`` are imported by the first call that
needs them (in its worker thread), not by the server's start: they cost about 60 ms of a start
that answers ``initialize`` without them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextvars import ContextVar
from functools import cache
from typing import TYPE_CHECKING, Any

from multimodal_mcp.backends.base import json_prompt
from multimodal_mcp.errors import BackendError, InvalidArgument
from multimodal_mcp.tools.common import in_thread

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

__all__ = [
    "MAX_SCHEMA_CHARS",
    "MAX_SCHEMA_DEPTH",
    "VALIDATION_SECONDS",
    "check_schema",
    "check_schema_off_loop",
    "json_prompt",
    "parse_answer",
    "parse_answer_off_loop",
]

MAX_SCHEMA_CHARS = 16_000
MAX_SCHEMA_DEPTH = 12
VALIDATION_SECONDS = 2.0
"""Most time checking one schema or one answer may take, every pattern match included."""

_deadline: ContextVar[float | None] = ContextVar("multimodal_mcp_validation_deadline", default=None)


class _OutOfTime(Exception):
    pass


def _search(pattern: str, text: str) -> bool:
    import regex

    deadline = _deadline.get()
    left = VALIDATION_SECONDS if deadline is None else deadline - time.monotonic()
    if left <= 0:
        raise _OutOfTime
    try:
        # concurrent: the engine lets go of the GIL while it matches, so the event loop keeps running.
        return regex.search(pattern, text, timeout=left, concurrent=True) is not None
    except TimeoutError:
        raise _OutOfTime from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    from jsonschema import ValidationError

    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance[:40]!r} does not match {pattern[:40]!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


@cache
def _bounded() -> Any:
    """Draft 2020-12's validator class with the two keywords that match patterns swapped for bounded
    ones."""
    from jsonschema import Draft202012Validator, validators

    return validators.extend(
        Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties}
    )


def _patterns(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "pattern" and isinstance(item, str):
                yield item
            if key == "patternProperties" and isinstance(item, dict):
                yield from (k for k in item if isinstance(k, str))
            yield from _patterns(item)
    elif isinstance(value, list):
        for item in value:
            yield from _patterns(item)


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
    """A validator for ``schema``, after size, depth, reference, pattern and meta-schema checks.

    Blocks for up to about ``VALIDATION_SECONDS``: call it off the event loop.

    Raises:
        InvalidArgument: the schema is too big, too deep, refers outside itself, has a pattern the
            engine cannot compile, is not a 2020-12 schema, or refers to itself without end.
    """
    import regex
    from jsonschema.exceptions import SchemaError

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
    for pattern in _patterns(schema):
        try:
            regex.compile(pattern)
        except regex.error as exc:
            raise InvalidArgument(
                f"response_schema has a pattern that does not compile ({pattern[:40]!r}...: {exc})"
            ) from None
    try:
        _bounded().check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top)"
        raise InvalidArgument(
            f"response_schema is not a valid JSON Schema (2020-12) at {where}: {exc.message[:200]}"
        ) from None
    validator: Draft202012Validator = _bounded()(schema)
    # A reference cycle that consumes nothing ({"$ref": "#"}) recurses on any value: find it now.
    try:
        probes: tuple[Any, ...] = (None, {}, [], "", 0)
        _within_budget(lambda: [validator.is_valid(v) for v in probes])
    except RecursionError:
        raise InvalidArgument(
            "response_schema refers to itself without end (a '$ref' cycle that never reaches a "
            "property or item); give the recursion a base case"
        ) from None
    except _OutOfTime:
        raise InvalidArgument(_too_slow()) from None
    return validator


def _too_slow() -> str:
    return (
        f"checking against response_schema took over {VALIDATION_SECONDS:g} s "
        "(VALIDATION_SECONDS), most likely a pattern that backtracks (like '^(a+)+$'); simplify its patterns"
    )


def _within_budget(run: Any) -> Any:
    token = _deadline.set(time.monotonic() + VALIDATION_SECONDS)
    try:
        return run()
    finally:
        _deadline.reset(token)


async def check_schema_off_loop(schema: dict[str, Any]) -> Draft202012Validator:
    """:func:`check_schema` in a worker thread."""
    return await in_thread(check_schema, schema)


async def parse_answer_off_loop(text: str, validator: Draft202012Validator, model: str) -> Any:
    """:func:`parse_answer` in a worker thread."""
    return await in_thread(parse_answer, text, validator, model)


def _first_json(text: str) -> Any:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`")
        stripped = stripped[4:] if stripped.lower().startswith("json") else stripped
    try:
        return json.loads(stripped)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
        pass
    decoder = json.JSONDecoder()
    for i, char in enumerate(stripped):
        if char in "{[":
            try:
                return decoder.raw_decode(stripped, i)[0]
            except (ValueError, RecursionError):
                continue
    raise ValueError("no JSON value found")


def parse_answer(text: str, validator: Draft202012Validator, model: str) -> Any:
    """The answer's JSON value, validated; the error says what failed, quoting little of the text.

    Blocks for up to about ``VALIDATION_SECONDS`` (see :func:`parse_answer_off_loop`).

    Raises:
        BackendError: the answer holds no JSON, or JSON that does not match.
        InvalidArgument: checking it ran out of time or recursed without end (the schema's doing).
    """
    begins = text[:160] + ("..." if len(text) > 160 else "")
    try:
        value = _first_json(text)
    except ValueError:
        raise BackendError(
            f"model {model!r} did not answer with JSON for response_schema (its answer began: {begins!r}); "
            "try a larger model, a simpler schema or more max_tokens"
        ) from None
    try:
        errors = _within_budget(lambda: sorted(validator.iter_errors(value), key=lambda e: len(list(e.path))))
    except _OutOfTime:
        raise InvalidArgument(_too_slow()) from None
    except RecursionError:
        raise InvalidArgument(
            f"checking the answer against response_schema recursed deeper than Python allows; "
            f"give the schema's recursion a base case or ask for a flatter answer (model {model!r})"
        ) from None
    error = next(iter(errors), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise BackendError(
            f"model {model!r} answered JSON that does not match response_schema at {where}: "
            f"{error.message[:200]}; try a larger model, a simpler schema or more max_tokens"
        )
    return value
