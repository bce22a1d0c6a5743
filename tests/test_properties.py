"""Property-based tests: whatever a client sends, the server answers with its own errors and keeps going.

Each tool's arguments are drawn from its params model's JSON schema (the same schema the MCP surface
publishes): values inside the bounds, and values that break them (wrong types, numbers past the
bounds, huge numbers, over-long unicode, nested junk, unknown keys, missing required arguments).
Image arguments are drawn from stored ids, random ids, and valid, mutated, truncated or random
PNG/JPEG/GIF/WebP/BMP bytes as data URIs or bare base64.

The properties: a call with an argument outside its schema is a tool error (``is_error``); no call
ever ends in an internal error or shows a traceback; list_models answers after every call.

The server runs with tiny limits (96 px, 2 steps, 2 images, 16 tokens), so the calls that pass
validation run the tiny models in well under a second. Set MMCP_HYPOTHESIS_PROFILE=thorough for a
long randomised run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp import Client
from PIL import Image

from multimodal_mcp.errors import MultimodalError
from multimodal_mcp.imaging.codec import decode_base64_payload, decode_image
from multimodal_mcp.imaging.compact import encode_lossless
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.clip_classify import ClipClassifyParams
from multimodal_mcp.tools.common import Params, Services
from multimodal_mcp.tools.compare_images import CompareImagesParams
from multimodal_mcp.tools.controlled_generate import ControlledGenerateParams
from multimodal_mcp.tools.describe_image import DescribeImageParams
from multimodal_mcp.tools.generate_image import GenerateImageParams
from multimodal_mcp.tools.jobs import CancelJobParams, GetJobParams
from multimodal_mcp.tools.list_models import ListModelsParams

from helpers import cpu_only, make_config, photo, text_of

settings.register_profile(
    "multimodal-mcp",
    max_examples=30,
    derandomize=True,  # the same examples on every run: CI stays stable
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "multimodal-mcp-thorough", max_examples=300, deadline=None, suppress_health_check=list(HealthCheck)
)
PROFILE = settings.get_profile(
    "multimodal-mcp-thorough" if os.environ.get("MMCP_HYPOTHESIS_PROFILE") == "thorough" else "multimodal-mcp"
)
# Tools that may run a model get fewer examples (unless the run is the thorough one).
HEAVY = PROFILE if PROFILE.max_examples > 100 else settings(PROFILE, max_examples=25)

LIMITS = {
    "max_side": 96,
    "max_pixels_per_call": 2 * 96 * 96,
    "max_images": 2,
    "max_steps": 2,
    "max_tokens": 16,
    "max_labels": 8,
    "max_input_pixels": 256 * 256,
    "max_input_bytes": 256 * 1024,
}
# Curated errors arrive as "Error executing tool <name>: <message>"; these mark everything else.
INTERNAL = re.compile(r"internal error|Traceback|File \"", re.I)
EXTRA_KEY = "<an unknown argument>"
IMAGE_FIELDS = {"image", "image_a", "image_b", "control_image", "init_image", "mask_image", "reference_image"}
CAPPED = {"width": 96, "height": 96, "steps": 2, "num_images": 2, "max_tokens": 16}
MODEL_FIELDS = {"model", "clip_model", "controlnet", "ip_adapter"}
MODEL_NAMES = [
    "tiny-sd15",
    "tiny-sdxl",
    "tiny-flux",
    "tiny-controlnet-canny",
    "tiny-controlnet-depth",
    "tiny-clip",
    "tiny-vlm",
    "tiny-ip-adapter",
]


# --- image values ---------------------------------------------------------------------------------


def _encoded(fmt: str, mode: str = "RGB", size: int = 32) -> bytes:
    image = photo("coffee", size)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


SAMPLES = {
    **{fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP")},
    # the modes decoders hand back besides RGB: grey, grey+alpha, 16 bit, bilevel, palette, CMYK, alpha
    **{
        f"{mode}-{fmt}": _encoded(fmt, mode)
        for fmt, mode in [
            ("PNG", "LA"),
            ("PNG", "I;16"),
            ("PNG", "RGBA"),
            ("PNG", "P"),
            ("BMP", "1"),
            ("JPEG", "CMYK"),
            ("JPEG", "L"),
            ("WEBP", "RGBA"),
        ]
    },
}
MIMES = ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "text/plain", "x/y"]


@st.composite
def mutated_image_bytes(draw: st.DrawFn) -> bytes:
    """A valid encoded image, then truncated, with bytes flipped or inserted, or a header swapped."""
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "header"]))
        if kind == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "header":
            other = SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))]
            data[:8] = other[:8]
    return bytes(data)


image_bytes = st.one_of(
    st.sampled_from(list(SAMPLES.values())),
    mutated_image_bytes(),
    st.binary(max_size=256),
)


@st.composite
def encoded_image_arg(draw: st.DrawFn) -> str:
    payload = base64.b64encode(draw(image_bytes)).decode()
    if draw(st.booleans()):
        payload = payload.replace("+", "-").replace("/", "_")
    form = draw(st.sampled_from(["data", "bare", "broken-data", "sliced"]))
    if form == "data":
        return f"data:{draw(st.sampled_from(MIMES))};base64,{payload}"
    if form == "broken-data":
        return draw(
            st.sampled_from(["data:", "data:image/png,", "data:;base64,", "data:image/png;base64"])
        ) + (payload)
    if form == "sliced" and payload:
        return payload[: draw(st.integers(1, len(payload)))]
    return payload or "="


def image_values(stored_id: str) -> st.SearchStrategy[str]:
    stored = st.just(f"image://{stored_id}")
    return st.one_of(
        stored,  # repeated: one_of picks a branch uniformly, so half the draws are a good image
        stored,
        stored,
        st.sampled_from([f"data:image/png;base64,{base64.b64encode(SAMPLES['PNG']).decode()}"]),
        st.from_regex(r"image://[0-9a-f]{16}", fullmatch=True),
        st.text(min_size=1, max_size=40).map(lambda s: f"image://{s}"),
        encoded_image_arg(),
        st.text(min_size=1, max_size=60),
    )


# --- arguments from the params models' schemas ------------------------------------------------------

# No NaN or infinity: JSON has neither (the client would send them as null).
finite = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20)
json_junk = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
huge = st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63, 10**30, -(10**30)])
solid_text = st.characters(categories=["L", "N", "S"])  # no whitespace: survives strip_whitespace


def _branches(schema: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    if "$ref" in schema:
        return _branches(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in schema:
        return [b for s in schema["anyOf"] for b in _branches(s, defs)]
    if isinstance(schema.get("type"), list):  # {"type": ["string", "null"], "enum": [...]}: one per type
        return [_of_type(schema, kind) for kind in schema["type"]]
    return [schema]


def _of_type(schema: dict[str, Any], kind: str) -> dict[str, Any]:
    branch = {**schema, "type": kind}
    if "enum" in schema:
        python = {"string": str, "null": type(None), "boolean": bool, "integer": int, "number": float}[kind]
        values = [v for v in schema["enum"] if type(v) is python]
        branch["enum"] = values
        if not values or kind == "null":
            del branch["enum"]
    return branch


def _valid(schema: dict[str, Any], defs: dict[str, Any], name: str, stored_id: str) -> st.SearchStrategy[Any]:
    options = []
    for branch in _branches(schema, defs):
        kind = branch.get("type")
        if "enum" in branch:
            options.append(st.sampled_from(branch["enum"]))
        elif kind == "null":
            options.append(st.none())
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "integer":
            lo = branch.get("minimum", branch.get("exclusiveMinimum", -(2**40) - 1) + 1)
            hi = branch.get("maximum", branch.get("exclusiveMaximum", 2**40 + 1) - 1)
            step = branch.get("multipleOf", 1)
            whole = st.integers(-(-lo // step), hi // step).map(lambda v, s=step: v * s)
            if name in CAPPED:  # mostly within the server's limits, so the calls get to run a model
                cap = min(hi, CAPPED[name])
                options.append(st.integers(-(-lo // step), cap // step).map(lambda v, s=step: v * s))
            options.append(whole)
        elif kind == "number":
            options.append(
                st.floats(
                    min_value=branch.get("minimum", branch.get("exclusiveMinimum")),
                    max_value=branch.get("maximum", branch.get("exclusiveMaximum")),
                    exclude_min="exclusiveMinimum" in branch,
                    exclude_max="exclusiveMaximum" in branch,
                    allow_nan=False,
                    allow_infinity=False,
                )
            )
        elif kind == "string" and name in IMAGE_FIELDS:
            options.append(image_values(stored_id))
        elif kind == "string" and name in MODEL_FIELDS:
            options.append(st.sampled_from(MODEL_NAMES))
            options.append(st.text(max_size=12))
        elif kind == "string" and "pattern" in branch:
            options.append(st.from_regex(branch["pattern"], fullmatch=True))
        elif kind == "string":
            options.append(
                st.text(min_size=branch.get("minLength", 0), max_size=min(branch.get("maxLength", 60), 60))
            )
        elif kind == "array":
            item = _valid(branch["items"], defs, name, stored_id)
            options.append(
                st.lists(item, min_size=branch.get("minItems", 0), max_size=min(branch.get("maxItems", 4), 4))
            )
        elif kind == "object":
            options.append(_object(branch, defs, stored_id, mutate=False).map(lambda pair: pair[0]))
    return st.one_of(options)


def _invalid(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values no branch of the schema accepts (pydantic's lax coercions taken into account)."""
    branches = _branches(schema, defs)
    kinds = {b.get("type") for b in branches}
    options: list[st.SearchStrategy[Any]] = []
    if "array" in kinds:
        options.append(st.dictionaries(st.text(max_size=5), json_junk, min_size=1, max_size=3))
    else:
        options.append(st.lists(json_junk, min_size=1, max_size=3))
        options.append(st.dictionaries(st.text(max_size=5), json_junk, max_size=3))
    only = branches[0] if len([b for b in branches if b.get("type") != "null"]) == 1 else None
    if only is None or only.get("type") == "null":
        return st.one_of(options)
    if only.get("type") in ("integer", "number"):
        if "maximum" in only or "exclusiveMaximum" in only:
            top = only.get("maximum", only.get("exclusiveMaximum"))
            options.append(st.integers(int(top) + 1, int(top) + 1000) | huge.filter(lambda v, t=top: v > t))
        if "minimum" in only or "exclusiveMinimum" in only:
            bottom = only.get("minimum", only.get("exclusiveMinimum"))
            options.append(st.integers(int(bottom) - 1000, int(bottom) - 1) | st.just(-(10**30)))
        if "multipleOf" in only:
            step = only["multipleOf"]
            options.append(st.integers(only["minimum"], only["maximum"]).filter(lambda v, s=step: v % s != 0))
        options.append(st.text(alphabet="abcxyz", min_size=1, max_size=5))
    elif only.get("type") == "string":
        options.append(st.integers() | finite)
        if only.get("maxLength", 10**9) <= 5000:
            top = only["maxLength"]
            options.append(st.text(alphabet=solid_text, min_size=top + 1, max_size=top + 10))
        if only.get("minLength", 0) >= 1:
            options.append(st.just(""))
        if "enum" in only:
            options.append(st.text(max_size=12).filter(lambda v, e=only["enum"]: v not in e))
        if "pattern" in only:
            options.append(
                st.text(max_size=20).filter(lambda v, p=only["pattern"]: re.fullmatch(p, v) is None)
            )
    elif only.get("type") == "array":
        if only.get("maxItems", 10**9) <= 300:
            item = st.text(alphabet=solid_text, min_size=1, max_size=5)
            options.append(st.lists(item, min_size=only["maxItems"] + 1, max_size=only["maxItems"] + 3))
        if only.get("minItems", 0) >= 1:
            options.append(st.just([]))
    elif only.get("type") == "boolean":
        options.append(st.text(alphabet="abcxyz", min_size=2, max_size=6) | st.integers(2, 10**6))
    return st.one_of(options)


def _object(
    schema: dict[str, Any], defs: dict[str, Any], stored_id: str, *, mutate: bool
) -> st.SearchStrategy[tuple[dict[str, Any], bool]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))

    @st.composite
    def draw_object(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
        # Half the examples stay inside the schema; the others break one to three arguments.
        names = sorted(properties)
        breaking: set[str] = set()
        if mutate and draw(st.booleans()):
            breaking = draw(st.sets(st.sampled_from([*names, EXTRA_KEY]), min_size=1, max_size=3))
        args: dict[str, Any] = {}
        for name in names:
            if name in breaking:
                if name in required and draw(st.booleans()):
                    continue  # a missing required argument
                args[name] = draw(_invalid(properties[name], defs))
            elif name in required or draw(st.integers(0, 2)) > 0:
                args[name] = draw(_valid(properties[name], defs, name, stored_id))
        if EXTRA_KEY in breaking:
            extra = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in properties))
            args[extra] = draw(json_junk)
        return args, bool(breaking)

    return draw_object()


def arguments(model: type[Params], stored_id: str) -> st.SearchStrategy[tuple[dict[str, Any], bool]]:
    """(arguments, whether some argument is outside the schema) for one tool."""
    schema = model.model_json_schema()
    return _object(schema, schema.get("$defs", {}), stored_id, mutate=True)


# --- the server, shared by a module's examples -------------------------------------------------------


class Served:
    def __init__(self, portal: BlockingPortal, client: Client, services: Services) -> None:
        self.portal, self.client, self.services = portal, client, services

    def call(self, tool: str, arguments: dict[str, Any]) -> tuple[bool, str]:
        result = self.portal.call(self.client.call_tool, tool, arguments)
        return bool(result.is_error), text_of(result)

    def __repr__(self) -> str:
        return "Served(...)"

    def still_answers(self) -> None:
        is_error, text = self.call("list_models", {})
        assert not is_error, text


# The strategies are built at import time, so the stored photo's id is computed here (ids are the
# content addresses of the PNG the store writes) and checked when the photo is stored.
STORED_PHOTO = photo("astronaut", 64)
STORED_ID = hashlib.sha256(encode_lossless(STORED_PHOTO).data).hexdigest()[:16]  # as put_input stores it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("properties")
    allowed = root / "allowed"
    allowed.mkdir()
    config = make_config(root, tiny_dir, allowed, limits=LIMITS)
    services = create_services(config, devices=cpu_only())
    assert services.store.put_input(STORED_PHOTO, source="data").id == STORED_ID
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(Client(build_server(config, services))) as client,
    ):
        yield Served(portal, client, services)


def check_call(served: Served, tool: str, example: tuple[dict[str, Any], bool]) -> None:
    args, broken = example
    is_error, text = served.call(tool, args)
    event("outside the schema" if broken else "error" if is_error else "ran")  # --hypothesis-show-statistics
    if broken:
        assert is_error, f"{tool} accepted an argument outside its schema: {text[:300]}"
    if is_error:
        assert not INTERNAL.search(text), f"{tool} failed internally: {text[:500]}"
        # Errors may quote a short argument or the start of one (a name, a path cut at 200 characters),
        # never a whole payload.
        for value in _strings(args):
            assert len(value) <= 200 or value not in text, "an error echoed the caller's data"
    served.still_answers()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


# --- the properties ----------------------------------------------------------------------------------


@HEAVY
@given(example=arguments(GenerateImageParams, STORED_ID))
def test_generate_image_answers_any_arguments_with_its_own_errors(served: Served, example: Any) -> None:
    check_call(served, "generate_image", example)


@HEAVY
@given(example=arguments(ControlledGenerateParams, STORED_ID))
def test_controlled_generate_answers_any_arguments_with_its_own_errors(served: Served, example: Any) -> None:
    check_call(served, "controlled_generate", example)


@HEAVY
@given(
    args=st.fixed_dictionaries(
        {"prompt": st.text(min_size=1, max_size=40), "control_image": image_values(STORED_ID)},
        optional={
            "control_type": st.sampled_from(["canny", "depth"]),
            "conditioning_scale": st.floats(0, 2),
            "low_threshold": st.integers(0, 100),
            "high_threshold": st.integers(101, 255),
            "init_image": image_values(STORED_ID),
            "strength": st.floats(0.05, 1),
            "steps": st.integers(1, 2),
            "width": st.sampled_from([64, 72, 80]),
            "seed": st.integers(0, 2**32 - 1),
            "num_images": st.integers(1, 2),
        },
    )
)
def test_controlled_generate_with_plausible_arguments_runs_or_names_the_problem(
    served: Served, args: dict[str, Any]
) -> None:
    # The schema-wide test above rarely satisfies every cross-argument rule at once; this one mostly
    # does, so the tiny ControlNet runs on decoded, mutated and random images.
    check_call(served, "controlled_generate", (args, False))


def test_img2img_with_no_denoising_step_left_is_an_argument_error(served: Served) -> None:
    # Found by the property above: Stable Diffusion img2img and inpainting run int(steps * strength)
    # steps, and zero of them crashed inside diffusers instead of naming the problem.
    args = {"prompt": "x", "init_image": f"image://{STORED_ID}", "steps": 1, "strength": 0.5, "seed": 1}
    is_error, text = served.call("controlled_generate", args)
    assert is_error and "steps=1 with strength=0.5 leaves no denoising step" in text and "steps >= 2" in text
    is_error, text = served.call("controlled_generate", {**args, "strength": 5e-324})
    assert is_error and "use a higher strength" in text
    is_error, text = served.call("controlled_generate", {**args, "steps": 2})
    assert not is_error, text


@HEAVY
@given(example=arguments(ClipClassifyParams, STORED_ID))
def test_clip_classify_answers_any_arguments_with_its_own_errors(served: Served, example: Any) -> None:
    check_call(served, "clip_classify", example)


@HEAVY
@given(example=arguments(DescribeImageParams, STORED_ID))
def test_describe_image_answers_any_arguments_with_its_own_errors(served: Served, example: Any) -> None:
    check_call(served, "describe_image", example)


@HEAVY
@given(example=arguments(CompareImagesParams, STORED_ID))
def test_compare_images_answers_any_arguments_with_its_own_errors(served: Served, example: Any) -> None:
    check_call(served, "compare_images", example)


@settings(PROFILE)
@given(
    tool=st.sampled_from(["get_job", "cancel_job", "list_models"]),
    data=st.data(),
)
def test_job_and_listing_tools_answer_any_arguments_with_their_own_errors(
    served: Served, tool: str, data: st.DataObject
) -> None:
    model = {"get_job": GetJobParams, "cancel_job": CancelJobParams, "list_models": ListModelsParams}[tool]
    args, broken = data.draw(arguments(model, STORED_ID))
    if tool == "get_job" and not broken:
        args["wait_seconds"] = 0  # an unknown id fails at once anyway; never wait on a real job here
    check_call(served, tool, (args, broken))


@settings(PROFILE, max_examples=PROFILE.max_examples * 4)
@given(data=image_bytes)
def test_decoding_any_bytes_returns_an_image_or_an_image_input_error(data: bytes) -> None:
    try:
        decoded = decode_image(data, max_pixels=LIMITS["max_input_pixels"])
    except MultimodalError:
        return
    assert decoded.image.mode in ("RGB", "RGBA") and decoded.image.width * decoded.image.height > 0


@settings(PROFILE, max_examples=PROFILE.max_examples * 4)
@given(value=encoded_image_arg() | st.text(max_size=200))
def test_decoding_any_base64_or_data_uri_raises_only_image_input_errors(value: str) -> None:
    try:
        raw = decode_base64_payload(value, max_bytes=LIMITS["max_input_bytes"])
    except MultimodalError:
        return
    assert isinstance(raw, bytes)


@settings(PROFILE, max_examples=PROFILE.max_examples * 2)
@given(value=image_values(STORED_ID))
def test_resolving_any_image_argument_stores_it_or_raises_a_project_error(served: Served, value: str) -> None:
    try:
        resolved = served.services.resolver.resolve(value, argument="image")
    except MultimodalError as exc:
        assert str(exc).startswith("image: "), str(exc)
        return
    if resolved.pending is not None:  # resolving writes nothing; the tool keeps its inputs
        served.services.store.commit(resolved.pending)
    assert served.services.store.exists(resolved.record.id)
    assert isinstance(resolved.image, Image.Image)
