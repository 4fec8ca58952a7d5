#!/usr/bin/env bash
# One-shot GPU check of the production recipe (configs/llama3-open-ko-8b.yaml) on a
# Llama-3-8B-shaped model with random weights: Unsloth QLoRA and transformers + PEFT training
# speed, peak VRAM and MFU, the merged 16-bit model, one DPO step. No network needed there.
#
#   bash bench/gpu_check.sh --pack .whl          # here, with PyPI: the wheels it needs (< 64 MiB)
#   bash bench/gpu_check.sh .whl [OPTIONS]       # on the GPU machine; OPTIONS go to gpu_check.py
#   GPU_CHECK_WHEELS=.whl bash bench/gpu_check.sh
#
# The wheel folder's wheels are installed with --no-index --no-deps into GPU_CHECK_SITE
# (default /tmp/gpu_check_site), skipping any already installed at that version, so a second
# run on the same machine installs nothing. The GPU image already holds torch (cu130),
# transformers 5.17, peft, accelerate, pyarrow, pandas, xxhash, sentencepiece, rich; the
# wheels below are what it lacks (bitsandbytes and unsloth trimmed to what a CUDA 13 run loads).
# The summary is the last line of stdout and $OUT/gpu_check.json (when OUT is set).
set -euo pipefail

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$bench_dir")
python=${PYTHON:-python3}

# what the GPU image lacks: Unsloth's own needs, bitsandbytes, and trl/datasets for DPO
# (trl and datasets at the newest versions unsloth 2026.10.7 accepts: trl<=1.15, datasets<5)
PACKED_WHEELS=(
  unsloth==2026.10.7 unsloth_zoo==2026.10.7 bitsandbytes==0.50.2
  trl==1.15.0 "datasets>=4.6,<5" dill multiprocess
  cut-cross-entropy torchao msgspec tyro docstring-parser typeguard shtab nest-asyncio
)

pack() {
  local dir=$1
  mkdir -p "$dir"
  # the GPU image's Python: CPython 3.12 on x86-64 Linux
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${PACKED_WHEELS[@]}"
  "$python" "$bench_dir/gpu_check.py" --trim-wheels "$dir"
  du -sh "$dir"
}

if [[ ${1:-} == --pack ]]; then
  [[ -n ${2:-} ]] || { echo "usage: bash bench/gpu_check.sh --pack WHEEL_DIR" >&2; exit 2; }
  pack "$2"
  exit 0
fi

if [[ $# -gt 0 && ${1:0:1} != - ]]; then
  wheels=$1
  shift
else
  wheels=${GPU_CHECK_WHEELS:-}
fi
if [[ -z $wheels ]]; then
  echo "gpu_check: give the wheel folder: bash bench/gpu_check.sh WHEEL_DIR [OPTIONS]" \
       "(or GPU_CHECK_WHEELS=WHEEL_DIR); make it with: bash bench/gpu_check.sh --pack WHEEL_DIR" >&2
  exit 2
fi
if [[ ! -d $wheels ]]; then
  echo "gpu_check: wheel folder '$wheels' not found; make it where PyPI is reachable with:" \
       "bash bench/gpu_check.sh --pack $wheels, and carry it along" >&2
  exit 2
fi

# Install the wheels that are not installed yet at their version
site=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
mkdir -p "$site"
export PYTHONPATH="$site:$repo_dir${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$python" - "$wheels" <<'EOF'
import sys
from importlib import metadata
from pathlib import Path

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        print(wheel)
EOF
)
if [[ -n $missing ]]; then
  echo "gpu_check: installing $(echo "$missing" | wc -l) wheels from $wheels into $site"
  # shellcheck disable=SC2086  # one wheel path a line, no spaces in wheel names
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" $missing
else
  echo "gpu_check: every wheel in $wheels is installed already"
fi

# Nothing may reach the network: the model is built here, the Hub is never asked
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd "$repo_dir"
exec "$python" "$bench_dir/gpu_check.py" "$@"
