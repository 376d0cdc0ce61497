#!/usr/bin/env bash
# Create .venv and install mhpo_vl at the versions CI tests (the README's first step).
#
#   bash scripts/setup.sh         # CPU: torch's CPU build, then mhpo_vl, pinned by locks/cpu.txt
#   bash scripts/setup.sh dev     # the same plus the dev extra (pytest, ruff, ...): what CI runs
#   bash scripts/setup.sh gpu     # Linux x86_64, Python 3.12, an NVIDIA driver for CUDA 13:
#                                 # .[vllm,dev] pinned by locks/gpu.txt (torch's CUDA build as
#                                 # vLLM pins it). Resolved, NOT yet run on a GPU.
#
# Every package comes from the lock (`pip install -c LOCK`): a fresh machine gets what CI
# tested, not whatever is newest. scripts/update_lock.py remakes the locks.
# torch: PyPI's Linux wheel is the CUDA build (GBs of NVIDIA libraries), so the CPU path
# installs torch==<lock's pin>+cpu from PyTorch's CPU index first; TORCH_INDEX_URL changes
# that index ("" = pip's configured sources only). torchvision stays out of the CPU path.
# PYTHON picks the interpreter for a new .venv (default python3; 3.11 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
case "$mode" in
  "" | dev | gpu) ;;
  *) echo "usage: bash scripts/setup.sh [dev|gpu]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "mhpo_vl needs Python >= 3.11; $PY is $("$PY" -V 2>&1). Set PYTHON=python3.11 (or newer)." >&2
    exit 1
  }
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip

lock=locks/cpu.txt extras="" torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
[ "$mode" = dev ] && extras="[dev]"
[ "$mode" = gpu ] && lock=locks/gpu.txt extras="[vllm,dev]"
lock_python=$(sed -n 's/^# python: *\([0-9]*\.[0-9]*\).*/\1/p' "$lock")
this_python=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$mode" = gpu ]; then
  if [ "$(uname -sm)" != "Linux x86_64" ] || [ "$this_python" != "$lock_python" ]; then
    echo "$lock is resolved for Linux x86_64, Python $lock_python; this is $(uname -sm), Python $this_python." >&2
    echo "Make .venv with Python $lock_python (rm -r .venv; PYTHON=python$lock_python bash scripts/setup.sh gpu)." >&2
    exit 1
  fi
elif [ "$this_python" != "$lock_python" ]; then
  echo "note: $lock was made and tested with Python $lock_python; this .venv has $this_python." >&2
fi

torch_pin=$(sed -n 's/^torch==//p' "$lock")
have_torch=$(python -c "import torch; print(torch.__version__)" 2>/dev/null || true)
if [ "$mode" != gpu ] && [ "${have_torch%%+*}" != "$torch_pin" ]; then
  spec="torch==$torch_pin"
  [ "$(uname -s)" = Linux ] && spec="$spec+cpu"
  index=()
  [ -n "$torch_index" ] && index=(--extra-index-url "$torch_index")
  # torch alone from that index; its dependencies come with the project, from the lock
  python -m pip install -q --no-deps ${index[@]+"${index[@]}"} "$spec"
fi
python -m pip install -q -c "$lock" -e ".${extras}"
if [ "$mode" = gpu ]; then
  python -c "import torch, sys; sys.exit(torch.version.cuda is None)" || {
    echo "torch $(python -c 'import torch; print(torch.__version__)') in .venv is a CPU build; rm -r .venv and rerun." >&2
    exit 1
  }
fi
python -c "import torch, transformers, mhpo_vl; print('mhpo_vl ready: torch', torch.__version__, '| transformers', transformers.__version__)"
