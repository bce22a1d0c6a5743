from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from multimodal_mcp.cli import main
from test_demo import parse, text_of


def test_models_lists_the_profile_with_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--profile", "default"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "stabilityai/stable-diffusion-xl-base-1.0" in out and "black-forest-labs/FLUX.1-schnell" in out
    assert "openai/clip-vit-large-patch14" in out and "llava-hf/llava-v1.6-mistral-7b-hf" in out
    assert "lllyasviel/control_v11p_sd15_canny" in out


def test_a_bad_config_file_exits_with_a_message_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\ntext_to_image = "missing"\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--config", str(bad)])
    assert exit_info.value.code == 2
    assert "defaults.text_to_image names 'missing'" in capsys.readouterr().err


def test_the_demo_runs_the_whole_chain_over_stdio_and_writes_a_report(tmp_path: Path, tiny_dir: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\ntiny_dir = "{tiny_dir}"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "multimodal_mcp",
            "demo",
            "--config",
            str(config),
            "--output",
            str(tmp_path / "out"),
            "--store-dir",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "out"
    sheet = parse((out / "report.html").read_text())
    chain = json.loads((out / "demo.json").read_text())
    first, second = chain["first"], chain["second"]
    heat_map = chain["comparison"]["diff_image"]["id"]
    ids = [first["images"][0]["id"], second["images"][0]["id"], heat_map]
    assert sheet.sources == [f"{image_id}.png" for image_id in ids], "every image of the chain, in order"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(sheet.sources), "thumbnails sit next to it"
    text = text_of(sheet)
    for step in (first, second):
        assert f"prompt {step['parameters']['prompt']} seed {step['seed']}" in text
    assert "clip_classify" in text and "SSIM" in text and "difference heat map" in text
    assert result.stdout.strip().endswith("report.html")


def test_models_shows_what_the_auto_profile_picked_and_why(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-secret")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setattr("multimodal_mcp.cli._cuda_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--profile", "auto"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "profile: auto" in out
    assert "no CUDA GPU found; OPENAI_API_KEY set -> hosted OpenAI models" in out
    assert (
        "hosted openai: key from OPENAI_API_KEY" in out
        and "hosted gemini: no key (set GEMINI_API_KEY)" in out
    )
    assert "sk-cli-secret" not in out
