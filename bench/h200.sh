#!/usr/bin/env bash
# The issue-7 figures on one GPU machine (an H200), as it is: Python 3.12 with torch and
# torchvision installed, no internet. It installs the carried wheels (bench/wheels/, made
# beforehand by bench/wheels/fetch.sh where there is internet) into a private folder, then runs
# bench/throughput.py on CUDA: the worker's pipeline against the naive loop, the
# classifier-only ceiling (same model, pre-cropped faces, best batch size) and end-to-end
# videos/s as a share of it, GPU utilisation (nvidia-smi, sampled) and peak GPU memory.
#
#   bench/h200.sh                       # on the GPU machine
#   bench/h200.sh --cpu                 # the same path on the CPU (a smoke run, anywhere)
#   OUT=/some/dir bench/h200.sh         # also keep the JSON figures and the log there
#   FRAMES=32 THREADS="1 4 8 16" bench/h200.sh   (the defaults)
#
# Any other arguments go to throughput.py (e.g. --model-file path/to/model.toml, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
device=cuda
args=()
for a in "$@"; do
    if [ "$a" = "--cpu" ]; then device=cpu; else args+=("$a"); fi
done
out="${OUT:-$(mktemp -d /tmp/h200-bench-XXXX)}"
mkdir -p "$out"

# 1. Packages: only when this Python lacks them (a developer machine has them in its venv).
needed="import decord, facenet_pytorch, kafka, timm, jsonschema, tomli_w, pdqhash, skvideo"
if ! "$PY" -c "$needed" 2>/dev/null; then
    site="${BENCH_SITE:-/tmp/bench-site}"
    shopt -s nullglob
    wheels=(bench/wheels/*.whl)
    [ ${#wheels[@]} -gt 0 ] || { echo "no wheels in bench/wheels: run bench/wheels/fetch.sh where there is internet" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
    for sdist in bench/wheels/pdqhash-*.tar.gz; do   # no cp312 wheel on PyPI: build with the image's Cython
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$sdist"
    done
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "$needed"
fi
export PYTHONUNBUFFERED=1

# 2. What machine this is.
"$PY" - <<'PYEOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# 3. The benchmark. GPU: DFDC's 32 frames a video, big device batches, more videos in flight
#    (each video 4 times a pass, 28 videos, so 16 in flight have work).
if [ "$device" = cuda ]; then
    frames="${FRAMES:-32}"; threads="${THREADS:-1 4 8 16}"
    set_args=(--copies 4 --set model.batch_size=256 --set faces.batch_size=32)
else
    frames="${FRAMES:-8}"; threads="${THREADS:-1 2}"
    set_args=()
fi
# shellcheck disable=SC2086
"$PY" bench/throughput.py --device "$device" --frames "$frames" --threads $threads --ceiling \
    "${set_args[@]}" --json "$out/throughput-$device.json" "${args[@]}" 2>&1 | tee "$out/throughput-$device.log"
echo "figures: $out/throughput-$device.json"
