from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
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


def test_the_demo_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('profile = "tiny"\n[defaults]\nvlm = "missing"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "multimodal_mcp",
            "demo",
            "--config",
            str(bad),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("multimodal-mcp: invalid configuration (config file ")
    assert line.endswith("defaults.vlm names 'missing', which is not a configured model")
    assert not (tmp_path / "o").exists()


def test_a_failing_demo_step_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from multimodal_mcp import demo

    async def failing_run(output_dir: Path, server_args: list[str]) -> Path:
        async def step() -> None:
            raise demo.DemoError("generate_image failed: model 'sdxl' is not in the Hugging Face cache")

        async with anyio.create_task_group() as group:  # as in a client session: the failure is wrapped
            group.start_soon(step)
        raise AssertionError("unreachable")

    monkeypatch.setattr(demo, "_run", failing_run)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--profile", "tiny", "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "multimodal-mcp demo: generate_image failed: model 'sdxl' is not in the Hugging Face cache"
    ]


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
        "hosted openai: key from OPENAI_API_KEY" in out and "hosted gemini: no key: set GEMINI_API_KEY" in out
    )
    assert "sk-cli-secret" not in out


def test_a_server_started_by_hand_says_it_waits_for_a_client_and_stops_at_the_first_ctrl_c(
    tmp_path: Path,
) -> None:
    import fcntl
    import os
    import pty
    import select
    import termios
    import time

    primary, terminal = pty.openpty()

    def take_the_terminal() -> None:  # the pty becomes the server's controlling terminal, as in a shell
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    server = subprocess.Popen(
        [sys.executable, "-m", "multimodal_mcp", "serve", "--profile", "tiny", "--store-dir", str(tmp_path)],
        stdin=terminal,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=take_the_terminal,
    )
    os.close(terminal)
    try:
        assert server.stderr is not None
        said = b""
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops" not in said and time.monotonic() < deadline:
            ready, _, _ = select.select([server.stderr], [], [], 1)
            if ready:
                said += os.read(server.stderr.fileno(), 4096)
        assert b"waiting for an MCP client on stdin" in said, said
        time.sleep(1)  # let it get to reading stdin, where Ctrl-C used to be ignored
        os.write(primary, b"\x03")  # Ctrl-C, typed at the terminal: SIGINT to its foreground group
        start = time.monotonic()
        assert server.wait(timeout=10) == 130
        assert time.monotonic() - start < 5
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        os.close(primary)


@pytest.mark.model
def test_the_model_libraries_warn_only_when_the_server_logs_at_debug() -> None:
    """A processor's backend fallback is not the user's to act on, and a prompt cut at the text
    encoder's window is reported in the result: neither reaches the server's log at WARNING."""
    script = (
        "import sys; from multimodal_mcp.cli import _setup_logging; _setup_logging(sys.argv[1]); "
        "from transformers import CLIPImageProcessor; CLIPImageProcessor()"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    quiet = subprocess.run([sys.executable, "-c", script, "WARNING"], capture_output=True, text=True, env=env)
    loud = subprocess.run([sys.executable, "-c", script, "DEBUG"], capture_output=True, text=True, env=env)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert "torchvision" not in quiet.stderr and "torchvision" in loud.stderr


def test_recover_store_rebuilds_the_index_from_the_files_and_removes_leftovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from multimodal_mcp.imaging.store import ImageStore

    from helpers import photo

    store_dir = tmp_path / "store"
    kept = ImageStore(store_dir).put(photo("coffee", 16), kind="input")
    orphan = store_dir / kept.id[:2] / "00000000000000ff.png"
    orphan.write_bytes(b"\x89PNG")  # an image without record
    with pytest.raises(SystemExit) as exit_info:
        main(["recover-store", "--profile", "tiny", "--store-dir", str(store_dir)])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "1 image(s)" in out and "1 image(s) without a record" in out
    assert not orphan.exists()
    # Each file it deletes is named, so a user who copied files in by hand sees what went.
    assert f"removed {orphan} (an image without its record)" in caplog.text


@pytest.mark.parametrize(
    ("command", "default"),
    [
        ("serve", "default: the config file's profile, else 'default'"),
        ("models", "default: the config file's profile, else 'default'"),
        ("demo", "default: 'tiny'"),
    ],
)
def test_the_help_of_profile_says_its_default(
    capsys: pytest.CaptureFixture[str], command: str, default: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    profile = help_text.split("--profile {auto,default,tiny} ", 1)[1]
    assert profile.startswith("built-in model profile:") and f"else tiny); {default}" in profile


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--front-replicas", "2"], "--front-replicas runs the front on Ray Serve: add --engine ray"),
        (["--engine", "ray", "--front-replicas", "65"], "must be a whole number from 0 to 64"),
        (["--engine", "ray", "--front-replicas", "two"], "e.g. --front-replicas 2"),
    ],
)
def test_front_replicas_are_refused_without_the_ray_engine_or_past_their_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    command = ["serve", "--transport", "http", "--profile", "tiny", "--store-dir", str(tmp_path), *extra]
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_builds_the_server_with_the_garbage_collector_off_and_serves_with_it_on_and_the_start_frozen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from multimodal_mcp import cli

    seen: dict[str, object] = {}

    class Server:
        def run(self, transport: str) -> None:
            seen["serving"] = (transport, gc.isenabled(), gc.get_freeze_count())

    def build_server(config: object) -> Server:
        seen["building"] = gc.isenabled()
        return Server()

    def stop(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr("multimodal_mcp.server.app.build_server", build_server)
    monkeypatch.setattr(cli, "_stop_at_once_on_ctrl_c", lambda: None)
    monkeypatch.setattr(cli, "_exit_after_shutdown", stop)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "--profile", "tiny", "--store-dir", str(tmp_path / "store")])
        assert exit_info.value.code == 0
        assert seen["building"] is False  # the start makes ~180,000 long-lived objects: no collection
        transport, enabled, frozen = seen["serving"]  # type: ignore[misc]
        assert transport == "stdio" and enabled is True and frozen > 0
    finally:
        gc.unfreeze()
        gc.enable()
    assert gc.isenabled()


def test_every_other_command_runs_with_the_garbage_collector_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from multimodal_mcp import cli

    during: list[bool] = []
    monkeypatch.setattr(cli, "_models", lambda args: during.append(gc.isenabled()) or 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--profile", "tiny"])
    assert exit_info.value.code == 0 and during == [True]
    with pytest.raises(SystemExit):
        main(["--version"])  # argparse exits while parsing
    assert gc.isenabled()


def test_the_ray_engine_flags_reach_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ray-max-models` and `--ray-safety` become the engine's settings (a stand-in engine records
    them and refuses to start, so no cluster is needed)."""
    from multimodal_mcp.cluster import engine as ray_engine
    from multimodal_mcp.config import ConfigError

    seen: list[object] = []

    class Engine:
        def __init__(self, config: object, settings: object) -> None:
            self.plan: dict[str, list[str]] = {}
            seen.append(settings)

        def start(self) -> None:
            raise ConfigError("not starting a cluster in this test")

    monkeypatch.setattr(ray_engine, "RayEngine", Engine)
    command = ["serve", "--transport", "http", "--profile", "tiny", "--store-dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        main([*command, "--engine", "ray", "--ray-max-models", "1", "--ray-safety"])
    settings = seen[0]
    assert settings.default_family.max_models_per_replica == 1  # type: ignore[attr-defined]
    assert settings.safety is True  # type: ignore[attr-defined]
    with pytest.raises(SystemExit) as exited:
        main([*command, "--engine", "ray", "--ray-max-models", "0"])
    assert exited.value.code == 2
    assert "must be a whole number from 1 to 64, e.g. --ray-max-models 1" in capsys.readouterr().err
