#!/usr/bin/env bash
# Create .venv and install mhpo_vl for CPU use (the README's first step).
# torch is pinned to the CPU build first: an unpinned torch pulls a multi-GB CUDA
# build (see PLATFORM notes in README). torchvision and vLLM stay out of the CPU path.
# Usage: bash scripts/setup.sh [dev]     # "dev" adds pytest and ruff
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
python -m pip install -q -e ".${extra}"
python -c "import torch, transformers, mhpo_vl; print('mhpo_vl ready: torch', torch.__version__, '| transformers', transformers.__version__)"
