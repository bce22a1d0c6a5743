from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from multimodal_mcp.pool.sizing import estimate_bytes, header_bytes, weight_files


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header, offset = {}, 0
    sizes = {"F32": 4, "F16": 2, "I64": 8}
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_header_bytes_counts_floats_at_the_target_dtype_and_leaves_integers_alone(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, {"w": ("F32", [10, 10]), "ids": ("I64", [5])})
    assert header_bytes(path) == 400 + 40
    assert header_bytes(path, float_itemsize=2) == 200 + 40


def test_a_variant_is_preferred_per_folder_and_other_variants_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "vae").mkdir()
    _write_safetensors(tmp_path / "unet" / "model.safetensors", {"w": ("F32", [100])})
    _write_safetensors(tmp_path / "unet" / "model.fp16.safetensors", {"w": ("F16", [100])})
    _write_safetensors(tmp_path / "vae" / "model.safetensors", {"w": ("F32", [10])})
    assert [p.relative_to(tmp_path).as_posix() for p in weight_files(tmp_path, "fp16")] == [
        "unet/model.fp16.safetensors",
        "vae/model.safetensors",
    ]
    assert [p.name for p in weight_files(tmp_path)] == ["model.safetensors", "model.safetensors"]
    assert estimate_bytes(tmp_path, float_itemsize=2, variant="fp16") == 200 + 20


def test_only_the_named_parts_of_a_repository_count_when_the_loader_reads_only_those(tmp_path: Path) -> None:
    # A LoRA or IP-Adapter repository: many weights files, one configured (and an image encoder).
    (tmp_path / "models" / "image_encoder").mkdir(parents=True)
    _write_safetensors(tmp_path / "models" / "adapter.safetensors", {"w": ("F32", [100])})
    _write_safetensors(tmp_path / "models" / "other.safetensors", {"w": ("F32", [1000])})
    _write_safetensors(tmp_path / "models" / "image_encoder" / "model.safetensors", {"w": ("F32", [10])})
    assert estimate_bytes(tmp_path, float_itemsize=4) == 4 * (100 + 1000 + 10)
    parts = ("models/adapter.safetensors", "models/image_encoder")
    assert estimate_bytes(tmp_path, float_itemsize=4, parts=parts) == 4 * (100 + 10)
    assert estimate_bytes(tmp_path, float_itemsize=4, parts=("models/adapter.safetensors",)) == 400


def test_no_weights_means_no_estimate_and_a_broken_header_is_an_error(tmp_path: Path) -> None:
    assert estimate_bytes(tmp_path / "missing", float_itemsize=4) is None
    assert estimate_bytes(tmp_path, float_itemsize=4) is None
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 8)
    with pytest.raises(ValueError, match="implausible"):
        estimate_bytes(tmp_path, float_itemsize=4)
