#!/usr/bin/env bash
# One prepared run on a lent CUDA machine that has torch but no network: install the wheels carried
# in .gpu-wheels (fetched beforehand with `pip download`, see bench/README.md), then the checks named
# on the command line, in order, each under its own timeout, output under $OUT:
#   sd15  generate_overhead.py --arch sd15: tool vs direct, SD 1.5 architecture, 512 px, fp16
#   sdxl  generate_overhead.py --arch sdxl: tool vs direct, SDXL architecture, 1024 px, fp16
#   clip  clip_throughput.py: 64 concurrent clip_classify calls against 64 pipeline calls
#   pool  tests/pool with real CUDA moves (MMCP_TEST_TORCH_DEVICE=cuda)
# Default: sd15 sdxl clip. Every step has a timeout: at most 585 s in all, inside one 10-minute command.
set -uo pipefail
CHECKS=${*:-sd15 sdxl clip}
for name in $CHECKS; do
  case $name in sd15 | sdxl | clip | pool) ;; *) echo "unknown check $name (sd15, sdxl, clip, pool)"; exit 2 ;; esac
done
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
  timeout 40 python3 -m pip install -q --no-index --find-links .gpu-wheels \
    "mcp==2.3.0" "diffusers==0.42.1" "transformers==5.24.0" platformdirs jsonschema 2>&1 | tail -3
  timeout 25 python3 -c "import torch, diffusers, transformers, mcp; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
run() {  # run NAME TIMEOUT_S COMMAND...: its output in $OUT/NAME.txt, its tail here
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s): $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name: exit $?"
  tail -22 "$OUT/$name.txt"
}
for name in $CHECKS; do
  case $name in
    sd15) run bench_generate_sd15 170 python3 bench/generate_overhead.py --arch sd15 --device cuda ;;
    sdxl) run bench_generate_sdxl 250 python3 bench/generate_overhead.py --arch sdxl --device cuda --runs 7 ;;
    clip) run bench_clip 90 python3 bench/clip_throughput.py --device cuda ;;
    pool) MMCP_TEST_TORCH_DEVICE=cuda run pool_tests 150 python3 -m pytest tests/pool -q -p no:cacheprovider -rs ;;
  esac
done
