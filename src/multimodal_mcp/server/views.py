"""The views (``multimodal_mcp.views``) as MCP Apps: ``ui://`` resources, the ``_meta.ui`` of the tools
that declare them, and the tools only views call.

Those tools are marked ``visibility: ["app"]``: hosts that render Apps keep them from the model, and
:class:`~multimodal_mcp.server.registration.MultimodalServer` lists them only to clients that
negotiated Apps, so the tool list a model sees is the same with or without views. They are
registered like every other tool (the same argument checks, run as the calling principal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.apps import Apps
from mcp.server.mcpserver import Context

from multimodal_mcp.config import Config
from multimodal_mcp.server.registration import MultimodalServer, register_tool
from multimodal_mcp.tools.common import Services
from multimodal_mcp.views import TOOL_VIEWS, VIEWS, page
from multimodal_mcp.views.actions import (
    GalleryImagesParams,
    GalleryImagesResult,
    SaveMaskParams,
    SaveMaskResult,
    gallery_images,
    save_mask,
)


def apps_extension() -> Apps:
    """The Apps extension with every view's HTML as a ``ui://`` resource (under the default CSP: the
    views need no outside domain)."""
    apps = Apps()
    for view in VIEWS:
        apps.add_html_resource(
            view.uri,
            page(view),
            name=view.uri.rsplit("/", 1)[-1],
            title=view.title,
            description=view.description,
        )
    return apps


def tool_meta(tool: str) -> dict[str, Any] | None:
    """The ``_meta`` of a model-visible tool: the view it declares, if any."""
    view = TOOL_VIEWS.get(tool)
    return None if view is None else {"ui": {"resourceUri": view.uri, "visibility": ["model", "app"]}}


def register_view_tools(
    server: MultimodalServer, config: Config, services_of: Callable[[Context], Services]
) -> None:
    """Registers the tools only the views call (hidden from the model)."""
    for implementation, params_model, result_model, title, read_only, view in (
        (
            gallery_images,
            GalleryImagesParams,
            GalleryImagesResult,
            "Your recent images",
            True,
            "gallery.html",
        ),
        (save_mask, SaveMaskParams, SaveMaskResult, "Save a painted mask", False, "gallery.html"),
    ):
        register_tool(
            server,
            config,
            services_of,
            implementation,
            params_model,
            result_model,
            title=title,
            read_only=read_only,
            as_job=False,
            meta={"ui": {"resourceUri": f"ui://multimodal-mcp/{view}", "visibility": ["app"]}},
        )
