"""The source tree's shape: files stay small, and the tools reach models only through the hub.

Imports are read with ``ast`` (every ``import`` and ``from ... import`` in a module, including those
inside functions), so nothing is imported to check them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "multimodal_mcp"
TOOLS = PACKAGE / "tools"

MAX_LINES = 700

TOOL_MODULES = frozenset(
    {
        "generate_image",
        "controlled_generate",
        "clip_classify",
        "describe_image",
        "compare_images",
        "list_models",
        "jobs",
    }
)
"""One module per MCP tool; none imports another."""
SHARED_MODULES = frozenset(
    {
        "common",
        "generation",
        "prompting",
        "verification",
        "json_answer",
        "phrases",
        "facts",
        "claims",
        "loras",
        "prompt_weights",
    }
)
"""What the tools share; any tools module may import these."""

BYPASSING = (
    "multimodal_mcp.backends.openai_backend",
    "multimodal_mcp.backends.gemini_backend",
    "multimodal_mcp.backends.diffusion",
    "multimodal_mcp.backends.hf",
    "multimodal_mcp.pool",
)
"""Modules (and their submodules) that would let a tool reach a model without the hub."""
ALLOWED_BYPASSES = {("common", "multimodal_mcp.pool")}
"""common's ``Services`` holds the server's pool (for ``list_models``' device listing and the
server's lifespan); no tool module imports the pool itself."""


def _tools_modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(TOOLS.glob("*.py")) if path.stem != "__init__"}


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names. ``from a import b`` yields ``a`` and
    ``a.b`` (``b`` may be a submodule); relative imports are resolved against ``package``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _within(module: str, parent: str) -> bool:
    return module == parent or module.startswith(parent + ".")


def _tools_imported(module: str) -> str | None:
    """The tools module that ``module`` is or lies in, if any."""
    prefix = "multimodal_mcp.tools."
    if not module.startswith(prefix):
        return None
    return module[len(prefix) :].split(".")[0]


# --- file sizes -------------------------------------------------------------------------------------


def _source_files() -> list[Path]:
    return sorted(path for path in SRC.rglob("*") if path.is_file() and "__pycache__" not in path.parts)


def test_no_source_file_is_longer_than_the_limit() -> None:
    files = _source_files()
    assert (PACKAGE / "__init__.py") in files and len(files) > 20  # the tree is where we look
    lengths = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in files}
    too_long = {str(path.relative_to(SRC.parent)): n for path, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines (split them along a seam): {too_long}"


# --- tools imports ----------------------------------------------------------------------------------


def test_every_tools_module_is_either_a_tool_or_shared() -> None:
    on_disk = set(_tools_modules())
    assert TOOL_MODULES.isdisjoint(SHARED_MODULES)
    assert on_disk == TOOL_MODULES | SHARED_MODULES, (
        f"classify new tools modules as a tool or shared: {sorted(on_disk ^ (TOOL_MODULES | SHARED_MODULES))}"
    )


def test_the_import_reader_sees_absolute_relative_and_local_imports(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text(
        "import os.path\n"
        "from multimodal_mcp.tools import generation\n"
        "from .common import Services\n"
        "from . import jobs\n"
        "def later():\n"
        "    from multimodal_mcp.pool.core import ModelPool\n"
    )
    found = imported_modules(module, "multimodal_mcp.tools")
    assert {
        "os.path",
        "multimodal_mcp.tools.generation",
        "multimodal_mcp.tools.common.Services",
        "multimodal_mcp.tools.jobs",
        "multimodal_mcp.pool.core",
    } <= found
    # And on the real tree: generate_image is known to build on the shared generation module.
    assert "multimodal_mcp.tools.generation" in imported_modules(
        TOOLS / "generate_image.py", "multimodal_mcp.tools"
    )


@pytest.mark.parametrize("name", sorted(TOOL_MODULES | SHARED_MODULES))
def test_tools_modules_import_no_tool_module_but_their_own(name: str) -> None:
    imports = imported_modules(TOOLS / f"{name}.py", "multimodal_mcp.tools")
    tools_used = {_tools_imported(module) for module in imports} - {None, name}
    assert tools_used <= SHARED_MODULES, (
        f"tools/{name}.py imports tool module(s) {sorted(tools_used - SHARED_MODULES)}; move what they "
        f"share into one of the shared modules {sorted(SHARED_MODULES)}"
    )


@pytest.mark.parametrize("name", sorted(TOOL_MODULES | SHARED_MODULES))
def test_tools_modules_reach_models_through_the_hub_only(name: str) -> None:
    imports = imported_modules(TOOLS / f"{name}.py", "multimodal_mcp.tools")
    bypasses = sorted(
        (module, parent)
        for module in imports
        for parent in BYPASSING
        if _within(module, parent) and (name, parent) not in ALLOWED_BYPASSES
    )
    assert not bypasses, (
        f"tools/{name}.py imports {[module for module, _ in bypasses]} directly; reach models through "
        "services.hub (multimodal_mcp.hub) and the handles of multimodal_mcp.handles"
    )
