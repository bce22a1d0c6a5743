#!/usr/bin/env bash
# One prepared run on a lent CUDA machine that has torch but no network: install the wheels carried
# in .gpu-wheels (fetched beforehand with `pip download`), run the pool tests with real CUDA moves,
# and benchmark (c) with the SD 1.5 architecture at 512 px, then (a) CLIP throughput.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
# The checkout runs from source, not installed: write the dist-info pip would, so that the backends'
# entry points (pyproject.toml, group multimodal_mcp.backends) are found on PYTHONPATH.
SITE="$OUT/site"
python3 - "$SITE" <<'PY'
import pathlib, sys, tomllib
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
info = pathlib.Path(sys.argv[1]) / f"multimodal_mcp-{project['version']}.dist-info"
info.mkdir(parents=True, exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.3\nName: multimodal-mcp\nVersion: {project['version']}\n")
groups = project["entry-points"]
(info / "entry_points.txt").write_text(
    "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items())
)
PY
export PYTHONPATH="$PWD/src:$SITE" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
{
  python3 -m pip install -q --no-index --find-links .gpu-wheels \
    "mcp==2.3.0" "diffusers==0.42.1" "transformers==5.24.0" platformdirs jsonschema 2>&1 | tail -3
  python3 -c "import torch, diffusers, transformers, mcp; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
MMCP_TEST_TORCH_DEVICE=cuda timeout 150 python3 -m pytest tests/pool -q -p no:cacheprovider -rs > "$OUT/pool_tests.txt" 2>&1
tail -5 "$OUT/pool_tests.txt"
timeout 240 python3 bench/generate_overhead.py --arch sd15 --device cuda > "$OUT/bench_generate.txt" 2>&1
tail -25 "$OUT/bench_generate.txt"
timeout 110 python3 bench/clip_throughput.py --device cuda --quick > "$OUT/bench_clip.txt" 2>&1
tail -25 "$OUT/bench_clip.txt"
