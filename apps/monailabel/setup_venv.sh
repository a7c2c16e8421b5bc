#!/usr/bin/env bash
# Build the MONAI Label 0.8.5 environment for apps/monailabel in its own venv (default: <repo>/.venv-label).
#
#   bash apps/monailabel/setup_venv.sh [VENV_DIR]
#
# Why a separate venv: monailabel 0.8.5 fails to import with pydicom 3 (pydicom-seg), forces numpy < 2, and its
# bundle infer task imports torchvision, which needs a matching torch (2.14.1 + torchvision 0.29.1).
# torch/torchvision are installed first (from the local wheel store / index configured for pip), then the
# project itself with its optional `[label]` extra. Several GB; several minutes.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$REPO_ROOT/.venv-label}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

start=$(date +%s)
echo "[setup_venv] creating $VENV with $($PYTHON --version)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --upgrade "pip" "setuptools<82" wheel
echo "[setup_venv] installing torch==2.14.1 torchvision==0.29.1"
"${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
echo "[setup_venv] installing the project with the [label] extra"
"${PIP[@]}" install -e "$REPO_ROOT[label]"
# DICOM SEG results (lib/infers/dicom_seg.py): highdicom 0.22.0 is the last release that takes pydicom 2
echo "[setup_venv] installing highdicom==0.22.0"
"${PIP[@]}" install "highdicom==0.22.0"
"$VENV/bin/python" - <<'PY'
import monailabel, monai, torch, torchvision, pydicom, numpy, highdicom, nrrd
print("[setup_venv] ok: monailabel", monailabel.__version__, "monai", monai.__version__, "torch", torch.__version__,
      "torchvision", torchvision.__version__, "pydicom", pydicom.__version__, "numpy", numpy.__version__,
      "highdicom", highdicom.__version__)
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: F401
from monailabel.tasks.infer.basic_infer import BasicInferTask  # noqa: F401
import monai_probunet.inference  # noqa: F401
PY
test -x "$VENV/bin/monailabel"
echo "[setup_venv] done in $(( $(date +%s) - start )) s; size $(du -sh "$VENV" | cut -f1)"
