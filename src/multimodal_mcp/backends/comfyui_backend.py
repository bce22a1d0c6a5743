"""ComfyUI as a generator: a running ComfyUI server and API-format workflow templates
(``pip install multimodal-mcp[comfyui]`` for the websocket client).

A model's ``source`` is a workflow saved with ComfyUI's "Export (API)": a JSON object of nodes. Any
input value that is exactly one of these placeholders is filled in per call, and the placeholders a
template holds are the model's capabilities (a template without ``{{seed}}`` takes no seed):

=====================  =======================================================  ===========================
placeholder            filled with                                              capability
=====================  =======================================================  ===========================
``{{prompt}}``         the prompt (required)                                    -
``{{negative}}``       the negative prompt ("" when none is given)              negative_prompt
``{{seed}}``           the image's seed (int)                                   seed
``{{steps}}``          denoising steps (int)                                    steps
``{{cfg}}``            guidance scale (float)                                   guidance_scale
``{{width}}``          output width, px (int), with ``{{height}}``              sizes: multiples of 8
``{{init_image}}``     an uploaded picture's name (for a LoadImage node)        img2img
``{{mask}}``           an uploaded L mask, 255 = repaint (LoadImageMask)        inpaint (with init_image)
``{{denoise}}``        strength (float)                                         strength
``{{control_image}}``  the uploaded control map (LoadImage -> ControlNetApply)  control_types (declared)
``{{control_scale}}``  conditioning_scale (float)                               -
``{{<any other>}}``    the model's ``pipeline_kwargs`` value of that name       - (e.g. a LoRA, its weight)
=====================  =======================================================  ===========================

The ControlNet lives in the workflow, so the model entry says which control types it takes:
``capabilities = {control_types = ["canny"]}`` (a template with ``{{control_image}}`` needs this, and
the declaration needs the placeholder). ``hub.controlnet_for`` then names the model itself; one map
per call, and control_start/control_end are the workflow's own. Any other placeholder, e.g.
``{{lora}}`` and ``{{lora_strength}}`` for a LoraLoader, is filled from the model's
``pipeline_kwargs`` table, so several model entries can share one template with different LoRAs; a
placeholder with no value there is refused, naming the key, when the model is loaded (a listing
logs it and shows no capabilities).

A call uploads its pictures (``POST /upload/image``), queues the filled graph (``POST /prompt``)
with a client id, follows the ``/ws`` websocket's ``progress`` messages into MCP progress until the
server says the prompt is done, then reads ``/history/{id}`` and fetches each output image from
``/view``. A cancelled call sends ``POST /interrupt``. Checkpoints stay in the template as ComfyUI
knows them. Calls are unpaid unless the model says ``paid = true``.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
from PIL import Image

from multimodal_mcp.backends.hosted import Connection, png_bytes
from multimodal_mcp.capabilities import Capabilities, SizeRule
from multimodal_mcp.config import Config, HostedSettings, ModelSpec
from multimodal_mcp.errors import BackendError, ProviderError, UnsupportedOperation
from multimodal_mcp.handles import GeneratedImages, Handle, ImageRequest, Progress
from multimodal_mcp.imaging.codec import decode_image
from multimodal_mcp.registry import HostedBackend

PLACEHOLDERS = (
    "prompt",
    "negative",
    "seed",
    "steps",
    "cfg",
    "width",
    "height",
    "init_image",
    "mask",
    "denoise",
    "control_image",
    "control_scale",
)
FALLBACKS: dict[str, Any] = {"steps": 20, "cfg": 7.0, "width": 1024, "height": 1024}
"""Values for placeholders a call leaves open and the model's defaults do not set."""
MAX_TEMPLATE_BYTES = 1024 * 1024
MAX_OUTPUT_PIXELS = 4096 * 4096
logger = logging.getLogger(__name__)


def read_template(source: str, values: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The API-format workflow at path ``source``, whose own placeholders take ``values`` (the
    model's ``pipeline_kwargs``).

    Raises:
        BackendError: unreadable, not a JSON object of nodes, no ``{{prompt}}``, a placeholder that is
            neither built in nor in ``values``, or a value that shadows a built-in placeholder (the
            message names the file and what is wrong).
    """
    values = values or {}
    path = Path(source).expanduser()
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise BackendError(f"ComfyUI template {path} is over {MAX_TEMPLATE_BYTES} bytes")
        graph = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot read ComfyUI template {path}: {exc}") from None
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "inputs" in n for n in graph.values()):
        raise BackendError(f"ComfyUI template {path} is not an API-format workflow (use 'Export (API)')")
    found = placeholders(graph)
    unknown = found - set(PLACEHOLDERS) - set(values)
    if unknown:
        raise BackendError(
            f"ComfyUI template {path} has placeholders with no value: {sorted(unknown)}; set them in the "
            f"model's pipeline_kwargs (built in: {', '.join(PLACEHOLDERS)})"
        )
    shadowed = set(values) & set(PLACEHOLDERS)
    if shadowed:
        raise BackendError(
            f"pipeline_kwargs {sorted(shadowed)} for ComfyUI template {path} are filled per call; "
            "fix them in the template instead"
        )
    if "prompt" not in found:
        raise BackendError(f"ComfyUI template {path} has no {{{{prompt}}}} input")
    return graph


def placeholders(graph: Mapping[str, Any]) -> set[str]:
    """The names of the ``{{name}}`` input values in ``graph``."""
    return {
        value[2:-2]
        for node in graph.values()
        for value in node["inputs"].values()
        if isinstance(value, str) and value.startswith("{{") and value.endswith("}}")
    }


def fill(graph: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``graph`` with each placeholder input replaced by its value (typed as given)."""
    filled = copy.deepcopy(dict(graph))
    for node in filled.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value.startswith("{{") and value.endswith("}}"):
                inputs[key] = values[value[2:-2]]
    return filled


def template_capabilities(found: set[str]) -> Capabilities:
    edits: tuple[Any, ...] = ()
    if "init_image" in found:
        edits = ("img2img", "inpaint") if "mask" in found else ("img2img",)
    return Capabilities(
        seed="seed" in found,
        negative_prompt="negative" in found,
        steps="steps" in found,
        guidance_scale="cfg" in found,
        sizes=SizeRule(multiple_of=8) if {"width", "height"} <= found else None,
        max_images=1,
        edit_modes=edits,
        strength="denoise" in found and bool(edits),
    )


class ComfyGenerator:
    """One workflow template on a ComfyUI server, as an :class:`~multimodal_mcp.handles.ImageGenerator`."""

    def __init__(self, connection: Connection, name: str, spec: ModelSpec) -> None:
        self.connection = connection
        self.name = name
        self.spec = spec
        self.settings = connection.settings
        self.template = read_template(spec.source, spec.pipeline_kwargs)
        found = placeholders(self.template)
        self.capabilities = template_capabilities(found).merged(spec.capabilities)
        if ("control_image" in found) != bool(self.capabilities.control_types):
            raise BackendError(
                f"model {name!r}: a ComfyUI template with {{{{control_image}}}} needs the control types "
                "its ControlNet takes, and those need the placeholder: capabilities = "
                '{control_types = ["canny"]} with a LoadImage input "{{control_image}}"'
            )
        if "control_scale" in found and "control_image" not in found:
            raise BackendError(
                f"model {name!r}: a ComfyUI template with {{{{control_scale}}}} needs {{{{control_image}}}} "
                "too (the scale belongs to the control map's ControlNetApply node)"
            )

    def _failed(self, what: str) -> ProviderError:
        return ProviderError(f"ComfyUI at {self.settings.base_url} {what} (model {self.name!r})")

    async def _json(self, response: Any, what: str) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            error = body.get("error") if isinstance(body, dict) else None
            detail = error.get("message") if isinstance(error, dict) else error
            nodes = body.get("node_errors") if isinstance(body, dict) else None
            said = "; ".join(str(x) for x in (detail, nodes) if x)[:400]
            raise self._failed(
                f"refused {what} (HTTP {response.status_code})" + (f": {said}" if said else "")
            )
        try:
            return response.json()
        except ValueError:
            raise self._failed(f"answered {what} with something that is not JSON") from None

    async def _upload(self, client: Any, image: Image.Image, label: str) -> str:
        files = {"image": (f"mmcp-{label}-{uuid.uuid4().hex[:8]}.png", png_bytes(image), "image/png")}
        found = await self._json(
            await client.post("/upload/image", files=files, data={"overwrite": "true"}), "the upload"
        )
        name = found.get("name") if isinstance(found, dict) else None
        if not isinstance(name, str):
            raise self._failed("answered the upload without a file name")
        sub = found.get("subfolder") or ""
        return f"{sub}/{name}" if sub else name

    async def generate(self, request: ImageRequest, *, progress: Progress | None = None) -> GeneratedImages:
        """Run the template once for ``request`` (one image), streaming step progress.

        Raises:
            ProviderError: ComfyUI refused the graph (its node errors in the message), failed while
                running it, was interrupted, or could not be reached.
        """
        return await self.connection.call(lambda: self._generate(request, progress))

    async def _generate(self, request: ImageRequest, progress: Progress | None) -> GeneratedImages:
        import websockets

        client = self.connection.client(self.name)
        # 1. Upload the pictures the template takes, and fill it in.
        values: dict[str, Any] = {
            "prompt": request.prompt,
            "negative": request.negative_prompt or "",
            "seed": request.seeds[0] if request.seeds else 0,
            "steps": request.steps,
            "cfg": request.guidance_scale,
            "width": request.width,
            "height": request.height,
            "denoise": request.strength if request.strength is not None else 1.0,
        }
        values = {k: FALLBACKS[k] if v is None else v for k, v in values.items()}
        if len(request.controls) > 1:
            raise UnsupportedOperation(f"model {self.name!r} takes one control map per call")
        if request.controls:
            values["control_scale"] = request.controls[0].scale
        wanted = placeholders(self.template)
        given = {"init_image": request.init_image, "mask": request.mask_image}
        given["control_image"] = request.controls[0].image if request.controls else None
        missing = [k for k, v in given.items() if k in wanted and v is None]
        if missing:
            raise UnsupportedOperation(
                f"model {self.name!r}'s workflow needs {', '.join(missing)} (use controlled_generate)"
            )
        values |= self.spec.pipeline_kwargs
        try:
            if request.init_image is not None:
                values["init_image"] = await self._upload(client, request.init_image.convert("RGB"), "init")
            if request.mask_image is not None:
                values["mask"] = await self._upload(client, request.mask_image.convert("L"), "mask")
            if request.controls and "control_image" in wanted:
                control = request.controls[0].image.convert("RGB")
                values["control_image"] = await self._upload(client, control, "control")
            graph = fill(self.template, values)
            # 2. Listen first, then queue: no progress message can be missed.
            client_id = uuid.uuid4().hex
            ws_url = self.settings.base_url.replace("http", "ws", 1).rstrip("/") + f"/ws?clientId={client_id}"
            async with websockets.connect(ws_url, open_timeout=self.settings.timeout_seconds) as ws:
                queued = await self._json(
                    await client.post("/prompt", json={"prompt": graph, "client_id": client_id}),
                    "the workflow",
                )
                prompt_id = queued.get("prompt_id") if isinstance(queued, dict) else None
                if not isinstance(prompt_id, str):
                    raise self._failed("queued the workflow without a prompt_id")
                try:
                    await self._follow(ws, prompt_id, progress)
                except anyio.get_cancelled_exc_class():
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await client.post("/interrupt", json={"prompt_id": prompt_id})
                    raise
            # 3. Fetch what the output nodes saved.
            history = await self._json(await client.get(f"/history/{prompt_id}"), "the history")
            images = await self._outputs(client, history.get(prompt_id, {}))
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            raise self._failed(
                f"could not be reached or dropped the connection ({type(exc).__name__})"
            ) from None
        except Exception as exc:
            if type(exc).__module__.startswith("httpx"):
                raise self._failed(f"could not be reached ({type(exc).__name__})") from None
            raise
        sent = {
            "prompt_id": prompt_id,
            **{k: v for k, v in values.items() if k in wanted},
        }
        sent.pop("prompt", None)
        sent.pop("negative", None)
        return GeneratedImages(images, None, sent)

    async def _follow(self, ws: Any, prompt_id: str, progress: Progress | None) -> None:
        """Read websocket messages until ``prompt_id`` has run; progress messages go to ``progress``."""
        async for raw in ws:
            if not isinstance(raw, str):
                continue  # binary frames are live previews
            message = json.loads(raw)
            data = message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            kind = message.get("type")
            if kind == "progress" and progress is not None:
                await progress(float(data.get("value", 0)), float(data.get("max", 0)) or None, "step")
            elif kind == "execution_error":
                said = str(data.get("exception_message") or "")[:300]
                raise self._failed(f"failed in node {data.get('node_id')} ({data.get('node_type')}): {said}")
            elif kind == "execution_interrupted":
                raise self._failed("interrupted the run")
            elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                return
        raise self._failed("closed the websocket before the run ended")

    async def _outputs(self, client: Any, entry: Mapping[str, Any]) -> list[Image.Image]:
        images: list[Image.Image] = []
        for output in (entry.get("outputs") or {}).values():
            for ref in output.get("images") or []:
                if ref.get("type") != "output":
                    continue  # previews and temporary files
                params = {
                    "filename": ref["filename"],
                    "subfolder": ref.get("subfolder", ""),
                    "type": "output",
                }
                response = await client.get("/view", params=params)
                if response.status_code >= 400:
                    raise self._failed(
                        f"would not send output {ref['filename']!r} (HTTP {response.status_code})"
                    )
                try:
                    decoded = decode_image(response.content, max_pixels=MAX_OUTPUT_PIXELS).image
                except Exception:
                    raise self._failed("sent an output that is not a readable image") from None
                images.append(decoded.convert("RGB"))
        if not images:
            raise self._failed("saved no output images (does the template end in a SaveImage node?)")
        return images


class ComfyUIBackend(HostedBackend):
    """A ComfyUI server: workflow templates as text-to-image models."""

    title = "ComfyUI"
    tasks = frozenset({"text_to_image"})
    paid = False
    own_controlnets = True
    sdk = "websockets"
    extra = "comfyui"

    def default_settings(self) -> HostedSettings:
        return HostedSettings(
            api_key_env="", base_url="http://127.0.0.1:8188", timeout_seconds=600, max_concurrency=1
        )

    def make_client(self, settings: HostedSettings) -> Any:
        import httpx2

        return httpx2.AsyncClient(
            base_url=settings.base_url, timeout=settings.timeout_seconds, headers=settings.headers or None
        )

    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        try:
            return template_capabilities(placeholders(read_template(spec.source, spec.pipeline_kwargs)))
        except BackendError as exc:  # listings go on; a call to the model reports the template's problem
            logger.warning("model %r: %s", name, exc)
            return Capabilities()

    def handle(self, name: str, spec: ModelSpec, connection: Connection) -> Handle:
        return ComfyGenerator(connection, name, spec)


backend = ComfyUIBackend()
