#!/usr/bin/env bash
# Creates the virtual environment $1 (default .venv) when missing and installs everything the
# project needs: torch + torchvision, detectron2, this package in editable mode and test tools.
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
"$PY" -m pip install --quiet -e '.[test]'
