"""Shared helpers for the benchmark scripts: machine description, server configs, MCP sessions.

Nothing here is timed; the scripts time what they measure themselves.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Nothing may be downloaded: every model is built locally and loaded from a directory.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE_ENV)
# OpenMP threads that spin while waiting stall for seconds at a time on small, shared VMs (seen on a
# 2-vCPU machine: single CLIP calls jumping from 0.2 s to 4 s). Passive waiting removes the stalls. It is
# set before torch is imported and inherited by the servers, so both sides of every comparison get it;
# an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "multimodal-mcp-bench-cache"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(device: str | None = None) -> list[str]:
    """What ran the benchmark: CPU, cores, GPU and library versions."""
    import diffusers
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    lines = [
        f"machine:      {platform.node() or '?'} ({platform.system()} {platform.machine()})",
        f"cpu:          {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), "
        f"torch threads {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"gpu:          {names} (CUDA {torch.version.cuda})")
    else:
        lines.append("gpu:          none")
    if device is not None:
        lines.append(f"device used:  {device}")
    lines.append(
        f"env:          OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} (both sides), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    lines.append(
        f"versions:     python {platform.python_version()}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
        f"mcp {_version('mcp')}, multimodal-mcp {_version('multimodal-mcp')}"
    )
    return lines


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def quiet_libraries() -> None:
    """No loading/saving progress bars or cast warnings from this process (stdout stays the report)."""
    import diffusers.utils.logging as diffusers_logging

    from multimodal_mcp.backends.sources import quiet_progress_bars

    quiet_progress_bars()
    diffusers_logging.set_verbosity_error()


def print_header(title: str, device: str | None = None) -> None:
    quiet_libraries()
    print(f"== {title} ==")
    for line in machine_lines(device):
        print(line)
    print()


# --- model cache ---------------------------------------------------------------------------------

BUILT_MARKER = "BENCH_BUILD_OK.json"


def cached_build(target: Path, build: Callable[[Path], dict[str, Any]], *, label: str) -> tuple[Path, bool]:
    """``target`` holding a finished build (built into a staging dir and renamed); (path, built_now)."""
    if (target / BUILT_MARKER).is_file():
        return target, False
    if any((target / name).is_file() for name in ("config.json", "model_index.json")):
        return target, False  # a model saved by someone else (--model-dir): use it as it is
    if target.exists() and any(target.iterdir()):
        raise SystemExit(f"{target} exists but holds no finished {label} build; remove it or choose another")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.building-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        print(f"building {label} into {target} ...", file=sys.stderr, flush=True)
        info = build(staging)
        (staging / BUILT_MARKER).write_text(json.dumps(info, indent=2, default=str) + "\n")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, True


# --- server configs ------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(
    path: Path,
    *,
    store_dir: Path,
    tiny_dir: Path,
    models: dict[str, dict[str, Any]],
    defaults: dict[str, str],
    server: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> Path:
    """A server TOML config on the ``tiny`` profile, extended with the bench models."""
    lines = ['profile = "tiny"', "", "[server]"]
    lines.append(f"store_dir = {_toml_value(store_dir)}")
    lines.append(f"tiny_dir = {_toml_value(tiny_dir)}")
    if "allowed_roots" not in (server or {}):
        lines.append("allowed_roots = []")
    for key, value in (server or {}).items():
        lines.append(f"{key} = {_toml_value(value)}")
    for table, values in (("server.pool", pool), ("server.limits", limits)):
        if values:
            lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for name, spec in models.items():
        lines += ["", f"[models.{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in spec.items()]
    lines += ["", "[defaults]"] + [f"{k} = {_toml_value(v)}" for k, v in defaults.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def pool_setting_exists(name: str) -> bool:
    """Whether ``[server.pool] name`` is a known key (the config refuses unknown keys)."""
    from multimodal_mcp.config import PoolSettings

    return name in PoolSettings.model_fields


def wait_for_results() -> dict[str, Any]:
    """``[server.pool]`` keys that make every call wait for its result rather than return a job handle."""
    return {"job_wait_seconds": 3600} if pool_setting_exists("job_wait_seconds") else {}


def server_parameters(config: Path, *, log_level: str = "WARNING") -> Any:
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "multimodal_mcp", "serve", "--config", str(config), "--log-level", log_level],
        env={**os.environ, **OFFLINE_ENV},
    )


async def call_tool(client: Any, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Structured result of a tool call; raises with the server's message on an error result."""
    from mcp.types import TextContent

    result = await client.call_tool(tool, arguments)
    if result.is_error or result.structured_content is None:
        text = " ".join(b.text for b in result.content if isinstance(b, TextContent))
        raise RuntimeError(f"{tool} failed: {text}")
    content = dict(result.structured_content)
    if set(content) == {"job"}:  # a job handle: the call outlived the server's wait
        raise RuntimeError(f"{tool} returned a job handle instead of a result: {content['job']}")
    return content


async def pool_status(client: Any) -> dict[str, Any]:
    contents = (await client.read_resource("pool://status")).contents[0]
    return dict(json.loads(contents.text))


async def read_png(client: Any, uri: str) -> bytes:
    import base64

    contents = (await client.read_resource(uri)).contents[0]
    return base64.b64decode(contents.blob)


@contextmanager
def temp_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- output --------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = []
    for index, row in enumerate(cells):
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# --- the benchmark table (bench/table.py) ------------------------------------------------------------

RESULTS_ENV = "MMCP_BENCH_RESULTS"
"""When set, the file each script appends its ratios to (JSON lines), for ``bench/table.py``."""


def record_ratio(
    name: str,
    value: float,
    *,
    alternative: str,
    target: float | None,
    higher_is_better: bool = False,
    note: str = "",
) -> None:
    """Report one ratio measured in this run against its alternative, for ``make bench``'s table.

    ``target``: the bound the ratio should meet (at most, or at least when ``higher_is_better``);
    None for a ratio shown for information. Written only when ``MMCP_BENCH_RESULTS`` names a file.
    """
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    row = {
        "name": name,
        "value": value,
        "alternative": alternative,
        "target": target,
        "higher_is_better": higher_is_better,
        "note": note,
    }
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(row) + "\n")


DISPLAY_P3_D50 = ((0.51512, 0.24119, -0.00105), (0.29198, 0.69225, 0.04189), (0.15710, 0.06657, 0.78407))
"""Display P3's red, green and blue colorants (XYZ, adapted to D50) as an ICC profile states them."""


def display_p3_profile() -> bytes:
    """An ICC profile for Display P3 (what iPhones tag their photos with): Pillow's sRGB profile with
    its colorant tags set to P3's primaries (both use the sRGB transfer curve and a D65 white) and its
    description set to "Display P3"."""
    import struct

    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", profile[128:132])[0]
    for i in range(count):
        signature, offset, _ = struct.unpack(">4sII", profile[132 + 12 * i : 144 + 12 * i])
        if signature in (b"rXYZ", b"gXYZ", b"bXYZ"):
            xyz = DISPLAY_P3_D50[(b"rXYZ", b"gXYZ", b"bXYZ").index(signature)]
            profile[offset + 8 : offset + 20] = struct.pack(">3i", *(round(v * 65536) for v in xyz))
        elif signature == b"desc" and profile[offset : offset + 4] == b"mluc":
            # Its name, in the first record of the multi-localized text (shorter than "sRGB built-in").
            name = "Display P3".encode("utf-16-be")
            length_at = offset + 20
            start = offset + struct.unpack(">I", profile[offset + 24 : offset + 28])[0]
            if len(name) <= struct.unpack(">I", profile[length_at : length_at + 4])[0]:
                profile[length_at : length_at + 4] = struct.pack(">I", len(name))
                profile[start : start + len(name)] = name
    profile[84:100] = bytes(16)  # the profile ID (an MD5 of the contents) no longer holds: "not computed"
    return bytes(profile)
