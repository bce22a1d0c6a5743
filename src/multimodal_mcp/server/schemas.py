"""The tool schemas as clients get them in ``tools/list``: portable and lean.

Each tool's input schema is derived from its params model and its output schema from its result
model (registration.py); pydantic writes both in a form that validates well but that agent
frameworks convert badly and that costs a model many tokens to read. The functions here rewrite them
into a form that accepts at least what the original accepts, open objects aside (below). The server
validates every call with the params model itself, so nothing looser gets through:

- ``$ref`` is inlined: Gemini's converter does not follow references, and OpenAI's strict converter
  rejects a reference it did not validate.
- ``anyOf: [X, {"type": "null"}]`` becomes X with ``"type": [X's type, "null"]``: converters that
  rewrite ``anyOf`` (google-genai's among them) drop the description and default that sit beside it.
  Its ``"default": null`` goes (omitting such an argument means null; OpenAI's strict converter
  drops it too); other defaults stay.
- generated ``title`` keys go: each repeats its property's name; so do string length bounds (see
  ``_LENGTH_BOUNDS``), which the server still enforces.
- boolean ``additionalProperties`` goes: google-genai's converter (3.x) fails on a boolean there, and
  with it every tool of the server. Unknown arguments are still refused, by the server
  (``MultimodalServer``) and by each params model (``extra="forbid"``); OpenAI's strict converter
  closes every object itself.
- an object that takes any keys (a JSON Schema argument, for one) is advertised as a string holding
  the object as JSON: strict mode cannot express an open object. The server decodes such a string
  before validation (the SDK parses JSON strings given for non-string arguments), and still accepts
  the object itself.

Output schemas (``lean_output_schema``) keep their shape (types, properties, required keys, items,
enums) and their ``$defs``, which a repeated part (an image reference) is written once in, down to
the parts of the result's own parts: deeper definitions (one claim of one image's verification) are
objects of any shape. They lose their descriptions, defaults and bounds: clients validate results
with them, and models rarely see them (the result's text and field names say what a model needs).
"""

from __future__ import annotations

import copy
from typing import Any

# Dropped from output schemas: documentation and bounds on what the server itself sends.
_OUTPUT_DROPPED = frozenset(
    {
        "description",
        "default",
        "examples",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "format",
    }
)
# Dropped from input schemas: string length bounds guard against oversized payloads (a 48 MB image
# argument, a 4000-character prompt); the server enforces them with an error that names the limit.
_LENGTH_BOUNDS = frozenset({"minLength", "maxLength"})
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "contains")


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local references can be inlined, not {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if not isinstance(node, dict):
        raise ValueError(f"{ref!r} does not name a schema")
    return node


def _inline(node: Any, root: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, list):
        return [_inline(item, root, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if ref in seen:
            raise ValueError(f"recursive reference {ref!r} cannot be inlined")
        target = _inline(_resolve(root, ref), root, (*seen, ref))
        siblings = {key: _inline(value, root, seen) for key, value in node.items() if key != "$ref"}
        return {**target, **siblings}
    return {key: _inline(value, root, seen) for key, value in node.items() if key != "$defs"}


def _nullable(variants: list[Any]) -> dict[str, Any] | None:
    """``[X, {"type": "null"}]`` (either order) as one schema with a nullable type, or None."""
    if len(variants) != 2 or {"type": "null"} not in variants:
        return None
    (other,) = [v for v in variants if v != {"type": "null"}]
    if not isinstance(other, dict) or not isinstance(other.get("type"), str) or "anyOf" in other:
        return None
    merged = {**other, "type": [other["type"], "null"]}
    if "enum" in merged:
        merged["enum"] = [*merged["enum"], None]
    return merged


def _open_object(node: dict[str, Any]) -> bool:
    """An object schema that names no keys and takes any."""
    return (
        node.get("type") == "object"
        and not node.get("properties")
        and node.get("additionalProperties", True) is not False
    )


def _rewrite(node: Any, *, inputs: bool, descriptions: bool, top: bool = False) -> Any:
    """One schema node and everything under it (keys of ``properties`` are names, not keywords)."""
    if not isinstance(node, dict):
        return node
    if inputs and not top and _open_object(node):
        node = _as_json_string(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if not descriptions and key in _OUTPUT_DROPPED:
            continue
        if inputs and key in _LENGTH_BOUNDS:
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {
                name: _rewrite(sub, inputs=inputs, descriptions=descriptions) for name, sub in value.items()
            }
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_rewrite(sub, inputs=inputs, descriptions=descriptions) for sub in value]
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = _rewrite(value, inputs=inputs, descriptions=descriptions)
        else:
            out[key] = value
    if isinstance(out.get("anyOf"), list):
        merged = _nullable(out["anyOf"])
        if merged is not None:
            del out["anyOf"]
            out = {**merged, **out}

    if inputs and out.get("default", ...) is None and "null" in out.get("type", ()):
        del out["default"]  # omitting a nullable optional argument means null
    if out.get("contentMediaType") == "application/json" and inputs:
        description = out.get("description", "")
        if not description.endswith(_JSON_STRING_HINT):
            out["description"] = f"{description} {_JSON_STRING_HINT}".lstrip()
    return out


def _as_json_string(node: dict[str, Any]) -> dict[str, Any]:
    kept = {key: value for key, value in node.items() if key in ("default", "description")}
    return {"type": "string", "contentMediaType": "application/json", **kept}


_JSON_STRING_HINT = "As a JSON string."


def portable_input_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (a tool's input schema as pydantic writes it) in the form every converter takes:
    references inlined, nullable types as type lists, no titles, no boolean ``additionalProperties``,
    open objects as JSON strings. The input is not changed."""
    result = _rewrite(_inline(copy.deepcopy(schema), schema), inputs=True, descriptions=True, top=True)
    result.setdefault("properties", {})
    return result


def lean_output_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (a tool's output schema) as its shape: no titles, descriptions, defaults or bounds,
    nullable types as type lists; ``$defs`` are kept, except that a definition only other
    definitions use (a part of a part, e.g. one claim of one image's verification) is an object of
    any shape. It accepts at least what ``schema`` accepts."""
    lean = _rewrite(copy.deepcopy(schema), inputs=False, descriptions=False)
    defs = lean.get("$defs")
    if isinstance(defs, dict):
        top = _refs({key: value for key, value in lean.items() if key != "$defs"})
        for name in list(defs):
            if f"#/$defs/{name}" not in top:
                defs[name] = {"type": "object"}
    return lean


def _refs(node: Any) -> set[str]:
    """Every ``$ref`` value in ``node``."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()
