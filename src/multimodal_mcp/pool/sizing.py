"""Model sizes from safetensors headers, without loading a single tensor.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that lists
every tensor's dtype and shape. Summing ``numel * bytes-per-element`` (at the dtype the model will
be loaded in, for floating-point tensors) gives the weights' memory before loading them.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_FLOATS = {"F64", "F32", "F16", "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


def header_bytes(path: Path, float_itemsize: int | None = None) -> int:
    """Bytes the tensors of one safetensors file take, floats counted at ``float_itemsize`` if given."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise ValueError(f"{path.name} has an implausible safetensors header ({length} bytes)")
        header = json.loads(fh.read(length))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        itemsize = (
            float_itemsize if float_itemsize is not None and dtype in _FLOATS else _ITEMSIZE.get(dtype, 4)
        )
        total += math.prod(info["shape"]) * itemsize
    return total


def weight_files(root: Path, variant: str | None = None) -> list[Path]:
    """The safetensors files a ``from_pretrained`` of ``root`` would load, per folder.

    With a variant (e.g. ``fp16``) a folder's ``*.fp16.safetensors`` files are used when present.
    """
    files: list[Path] = []
    folders = {p.parent for p in root.rglob("*.safetensors")}
    for folder in sorted(folders):
        candidates = sorted(folder.glob("*.safetensors"))
        if variant:
            chosen = [p for p in candidates if p.name.endswith(f".{variant}.safetensors")]
            if chosen:
                files.extend(chosen)
                continue
        files.extend(p for p in candidates if not _is_other_variant(p.name))
    return files


def _is_other_variant(name: str) -> bool:
    # "model.fp16.safetensors" is a variant file; "model.safetensors" and sharded
    # "model-00001-of-00002.safetensors" are not.
    stem = name[: -len(".safetensors")]
    return "." in stem


def estimate_bytes(
    root: Path, *, float_itemsize: int | None, variant: str | None = None, parts: tuple[str, ...] = ()
) -> int | None:
    """Estimated weight bytes of the checkpoint in directory ``root``; None when it has no weights here.

    ``parts``: the files and folders (relative to ``root``) the loader reads when it reads only some of
    a repository, e.g. an IP-Adapter's or LoRA's ``weight_name`` of many; empty: every folder.
    """
    if not root.is_dir():
        return None
    files = weight_files(root, variant)
    if parts:
        read = [root / part for part in parts]
        files = [p for p in files if any(p == r or r in p.parents for r in read)]
    if not files:
        return None
    return sum(header_bytes(p, float_itemsize) for p in files)
