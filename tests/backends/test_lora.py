"""LoRAs as configured models (task "lora"): their sources, their config checks, and what a LoRA
that does not fit its base model gives."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from mcp import Client

from multimodal_mcp.config import ConfigError, load_config
from multimodal_mcp.server.app import build_server, create_services

from helpers import call_error, call_ok, cpu_only, open_png, read_png

INK_FILE = "lora-sd15-ink/pytorch_lora_weights.safetensors"


def _config(tmp_path: Path, tiny_dir: Path, models: str):  # type: ignore[no-untyped-def]
    config_file = tmp_path / "c.toml"
    config_file.write_text(models)
    return load_config(
        profile="tiny",
        config_file=config_file,
        cache_dir=tmp_path / "cache",
        home=tmp_path,
        overrides={"store_dir": tmp_path / "store", "tiny_dir": tiny_dir},
    )


async def test_a_lora_from_a_file_or_a_folder_gives_the_built_in_ones_image(
    tmp_path: Path, tiny_dir: Path
) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(tiny_dir / INK_FILE, folder / "ink_style.safetensors")
    config = _config(
        tmp_path,
        tiny_dir,
        f"""
[models.ink-file]
task = "lora"
backend = "diffusers"
source = "{tiny_dir / INK_FILE}"
base_models = ["tiny-sd15"]

[models.ink-folder]
task = "lora"
backend = "diffusers"
source = "{folder}"
weight_name = "ink_style.safetensors"
base_models = ["tiny-sd15"]
""",
    )
    args = {"prompt": "a boat, ink sketch", "seed": 2}
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        images = []
        for name in ("tiny-lora-ink", "ink-file", "ink-folder"):
            out = await call_ok(client, "generate_image", {**args, "loras": [{"name": name, "scale": 1.0}]})
            images.append(open_png(await read_png(client, out["images"][0]["uri"])).tobytes())
        plain = await call_ok(client, "generate_image", args)
        # The pixels (the PNGs differ in their text chunk, which names the LoRA).
        assert images[0] == images[1] == images[2]
        assert images[0] != open_png(await read_png(client, plain["images"][0]["uri"])).tobytes()


async def test_a_lora_for_another_architecture_is_a_curated_error_and_the_model_stays_usable(
    tmp_path: Path, tiny_dir: Path
) -> None:
    # The SD 1.5 LoRA's layers are not the SDXL UNet's (other widths): configured for it by mistake.
    config = _config(
        tmp_path,
        tiny_dir,
        f"""
[models.wrong-base]
task = "lora"
backend = "diffusers"
source = "{tiny_dir / INK_FILE}"
base_models = ["tiny-sdxl"]
""",
    )
    args = {"prompt": "a boat", "model": "tiny-sdxl", "seed": 2}
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        before = await call_ok(client, "generate_image", args)
        message = await call_error(client, "generate_image", {**args, "loras": [{"name": "wrong-base"}]})
        assert "LoRA 'wrong-base' does not fit model 'tiny-sdxl'" in message and "base_models" in message
        assert "Traceback" not in message
        after = await call_ok(client, "generate_image", args)
        assert await read_png(client, after["images"][0]["uri"]) == await read_png(
            client, before["images"][0]["uri"]
        )


async def test_a_lora_for_another_family_whose_weights_match_nothing_is_a_curated_error(
    tmp_path: Path, tiny_dir: Path
) -> None:
    # The SD3 LoRA's keys name the SD3 transformer: on SD 1.5 diffusers keeps none of them and
    # attaches nothing, without an error of its own.
    config = _config(
        tmp_path,
        tiny_dir,
        f"""
[models.sd3-on-sd15]
task = "lora"
backend = "diffusers"
source = "{tiny_dir / "lora-sd3"}"
base_models = ["tiny-sd15"]
""",
    )
    args = {"prompt": "a boat", "model": "tiny-sd15", "seed": 2}
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        before = await call_ok(client, "generate_image", args)
        message = await call_error(client, "generate_image", {**args, "loras": [{"name": "sd3-on-sd15"}]})
        assert "LoRA 'sd3-on-sd15' does not fit model 'tiny-sd15'" in message
        assert "none of its weights match" in message and "base_models" in message
        assert "internal error" not in message.lower() and "Traceback" not in message
        after = await call_ok(client, "generate_image", args)
        assert await read_png(client, after["images"][0]["uri"]) == await read_png(
            client, before["images"][0]["uri"]
        )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('source = "a/b"', "a lora model needs 'base_models'"),
        ('source = "a/b"\nbase_models = ["sdxl"]\nweight_name = "ink.bin"', "must be a .safetensors file"),
        ('source = "a/b"\nbase_models = ["sdxl"]\nscale = 3', "scale"),
    ],
)
def test_a_lora_table_without_its_base_models_or_with_pickle_weights_is_refused(
    tmp_path: Path, table: str, message: str
) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'[models.x]\ntask = "lora"\nbackend = "diffusers"\n{table}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(config_file=config_file, cache_dir=tmp_path / "cache", home=tmp_path)


async def test_combining_loras_does_not_warn_that_a_peft_config_is_already_there(
    tmp_path: Path, tiny_dir: Path
) -> None:
    config = _config(tmp_path, tiny_dir, "")
    two = [{"name": "tiny-lora-ink", "scale": 1.0}, {"name": "tiny-lora-glow", "scale": 0.5}]
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await call_ok(client, "generate_image", {"prompt": "a boat", "seed": 2, "loras": two})
    assert not [w for w in caught if "peft_config" in str(w.message)]
