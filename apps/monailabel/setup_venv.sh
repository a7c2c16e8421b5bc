#!/usr/bin/env bash
# Build the MONAI Label 0.8.5 environment for apps/monailabel in its own venv (default: <repo>/.venv-label).
#
#   bash apps/monailabel/setup_venv.sh [VENV_DIR]            # LABEL_TORCH=auto (default) | cpu | cuda
#
# Why a separate venv: monailabel 0.8.5 fails to import with pydicom 3 (pydicom-seg) and forces numpy < 2.
# torch: on a machine without an NVIDIA GPU (no nvidia-smi) or with LABEL_TORCH=cpu, the CPU-only build
# torch==2.13.0+cpu (PyTorch's CPU index, or a local wheel store configured for pip): measured 3.8 GB and 7 min on a
# 2-core CPU, no CUDA libraries. With a GPU (or LABEL_TORCH=cuda): torch==2.14.1 + torchvision==0.29.1 (CUDA
# builds that import together): 8.2 GB, 17 min. torchvision is needed only by MONAI Label's bundle infer task and
# Restored transform, which this app does not use; beside the CPU torch it may not import (MONAI imports it
# optionally) and the app is unaffected. Then the project with its optional `[label]` extra, and highdicom 0.22.0
# (the last release that takes pydicom 2) for DICOM SEG.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$REPO_ROOT/.venv-label}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
LABEL_TORCH="${LABEL_TORCH:-auto}"
case "$LABEL_TORCH" in
  auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then LABEL_TORCH=cuda; else LABEL_TORCH=cpu; fi;;
  cpu|cuda) ;;
  *) echo "[setup_venv] LABEL_TORCH must be auto, cpu or cuda, got '$LABEL_TORCH'" >&2; exit 2;;
esac
TORCH_CPU_INDEX="${TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}"  # set it empty to use pip's own config only

start=$(date +%s)
echo "[setup_venv] creating $VENV with $($PYTHON --version); torch build: $LABEL_TORCH"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --upgrade "pip" "setuptools<82" wheel
if [ "$LABEL_TORCH" = cpu ]; then
  EXTRA=()
  TV=()
  if [ -n "$TORCH_CPU_INDEX" ] && "$VENV/bin/python" -c \
      "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" "$TORCH_CPU_INDEX/torch/" 2>/dev/null; then
    EXTRA=(--extra-index-url "$TORCH_CPU_INDEX")
    TV=("torchvision==0.28.0")  # its CPU build, which imports beside the CPU torch
  else
    echo "[setup_venv] $TORCH_CPU_INDEX is not reachable: the CPU wheel must come from pip's configured index/wheel store"
  fi
  echo "[setup_venv] installing torch==2.13.0 (CPU build)"
  "${PIP[@]}" install "torch==2.13.0" ${TV[@]+"${TV[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  TORCH_PIN="torch==2.13.0"
  "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if '+cpu' in torch.__version__ or not torch.version.cuda else 1)" \
    || echo "[setup_venv] warning: no CPU-only torch wheel was found; the CUDA build was installed" >&2
else
  echo "[setup_venv] installing torch==2.14.1 torchvision==0.29.1"
  "${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
  TORCH_PIN="torch==2.14.1"
fi
echo "[setup_venv] installing the project with the [label] extra and highdicom==0.22.0"
"${PIP[@]}" install -e "$REPO_ROOT[label]" "$TORCH_PIN" "highdicom==0.22.0"  # torch already satisfies the pin
"$VENV/bin/python" - <<'PY'
import monailabel, monai, torch, pydicom, numpy, highdicom, nrrd
try:
    import torchvision
    tv = torchvision.__version__
except Exception as e:  # noqa: BLE001 -- a CUDA torchvision beside the CPU torch; not used by this app
    tv = f"not importable ({type(e).__name__}; not used by apps/monailabel)"
print("[setup_venv] ok: monailabel", monailabel.__version__, "monai", monai.__version__, "torch", torch.__version__,
      "torchvision", tv, "pydicom", pydicom.__version__, "numpy", numpy.__version__, "highdicom", highdicom.__version__)
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: F401
from monailabel.tasks.infer.basic_infer import BasicInferTask  # noqa: F401
import monai_probunet.inference  # noqa: F401
PY
test -x "$VENV/bin/monailabel"
echo "[setup_venv] done in $(( $(date +%s) - start )) s; size $(du -sh "$VENV" | cut -f1)"
