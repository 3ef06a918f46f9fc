#!/usr/bin/env bash
# Downloads the wheels bench/h200.sh installs on a GPU machine without internet (Python 3.12,
# torch and torchvision already there): what the worker and the benchmark need that such an
# image lacks. Run it here, with internet (PyPI); the files are git-ignored.
#
#   bench/wheels/fetch.sh            # into bench/wheels/
#   PYTHON312=python3.12 bench/wheels/fetch.sh   # also builds pdqhash (no cp312 wheel on PyPI)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pip=(python3 -m pip)
[ -n "${PIP:-}" ] && read -r -a pip <<<"$PIP"
# Versions inside pyproject.toml's ranges. facenet-pytorch: no deps (it would pull another torch).
"${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d "$here" \
    'decord2>=3.4,<4' 'facenet-pytorch==2.5.3' 'kafka-python>=3.0.12,<4' \
    'jsonschema>=4.21,<5' 'jsonschema-specifications>=2023.3' 'referencing>=0.28' 'rpds-py>=0.7' \
    'tomli-w>=1.0,<2' 'av>=14,<20' 'scikit-video==1.1.11' 'py-spy>=0.3.14,<0.5'
# pdqhash publishes no cp312 wheel: build one where a Python 3.12 is at hand, else carry the
# source (h200.sh builds it there with the image's Cython and compiler).
py312="${PYTHON312:-}"
if [ -z "$py312" ]; then
    for candidate in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
        [ -x "$candidate" ] && { py312="$candidate"; break; }
    done
fi
if [ -n "$py312" ] && "$py312" -m pip wheel --no-deps -w "$here" 'pdqhash>=0.2.8,<0.3'; then
    :
else
    "${pip[@]}" download --no-deps --no-binary=pdqhash -d "$here" 'pdqhash>=0.2.8,<0.3'
fi
ls -la "$here"
du -sh "$here"
