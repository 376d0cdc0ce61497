#!/usr/bin/env bash
# The GPU acceptance run (see scripts/gpu_acceptance.py): the GPU test tier, a few steps of
# a 3B-size Qwen2.5-VL under FSDP2 with its peak memory against `mhpo-vl estimate`, and
# the real-vLLM test. Writes runs/gpu_acceptance/report.md. Run it from the repository
# root on a machine with one CUDA GPU:  bash scripts/gpu_acceptance.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -c "import mhpo_vl" 2>/dev/null || "$PY" -m pip install -q --no-deps -e .
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" scripts/gpu_acceptance.py "$@"
