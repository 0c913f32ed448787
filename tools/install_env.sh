#!/usr/bin/env bash
# Creates the virtual environment $1 (default .venv) when missing and installs everything the
# project needs: torch + torchvision, detectron2, this package in editable mode with all its
# extras, and test tools.
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip 'setuptools<81' wheel

case "$(uname -m)" in
  aarch64|arm64) TORCH='torch==2.9.1 torchvision==0.24.1' ;;
  *)             TORCH='torch==2.14.1 torchvision==0.29.1' ;;
esac
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet $TORCH
fi

bash tools/install_detectron2.sh "$PY"
# Every extra (setup.py: detectron2, datasets, plot) and the test tools.
"$PY" -m pip install --quiet -e '.[all,test]'
# COCOPanopticEvaluator's panopticapi, for the coco_panoptic_seg tests (tests/test_evaluation.py,
# tests/test_miniature_training.py): cocodataset/panopticapi packaged as a wheel. Not in setup.py's
# test extra and without its dependencies: its metadata pins numpy<2, which its code does not
# need, and pip would downgrade this environment's NumPy for it.
"$PY" -m pip install --quiet --no-deps 'panopticapi-lite==0.2.0'
# biotorch, the peer implementation tools/compare_biotorch.py trains beside ours (and
# tests/test_compare_biotorch.py checks gradients against): not a dependency of the package, and
# without its own dependencies, whose pins (an older torch) this environment does not follow.
"$PY" -m pip install --quiet --no-deps 'biotorch==0.0.16'
