#!/usr/bin/env bash
# Installs detectron2 into the Python environment given as $1 (default: python3 on PATH).
#
# detectron2 publishes no wheels and its PyPI name is taken, so it arrives one of three ways:
#   1. already installed (e.g. built from source by the user): kept as it is;
#   2. BIO_DETECTRON2_FROM_SOURCE=1: the official source from GitHub, built locally (needs internet);
#   3. otherwise: the PyPI wheel `sal-detectron2==0.7.2` (upstream detectron2 at commit a59f0563
#      plus a one-line fix). It is tagged cp310 but its Python code runs on any Python 3; its
#      compiled `_C` does not load elsewhere, and RetinaNet/Faster R-CNN training do not need it.
#      It is installed with --no-deps because its metadata pins numpy<2; its real runtime
#      requirements (plus fvcore and iopath, which it imports but omits) are installed after.
set -euo pipefail

PY=${1:-python3}

if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "detectron2 already installed: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
  exit 0
fi

# detectron2.model_zoo imports pkg_resources, which setuptools 81 removed.
"$PY" -m pip install --quiet 'setuptools<81' wheel

if [[ "${BIO_DETECTRON2_FROM_SOURCE:-0}" == 1 ]]; then
  "$PY" -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
  -d "$tmp" 'sal-detectron2==0.7.2'
src=$(ls "$tmp"/sal_detectron2-0.7.2-*.whl)
mv "$src" "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
"$PY" -m pip install --quiet --no-deps "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
# Runtime requirements from the wheel's METADATA, with the stale numpy<2 pin dropped.
"$PY" -m pip install --quiet 'Pillow>=7.1' matplotlib 'pycocotools>=2.0.2' 'termcolor>=1.1' \
  'yacs>=0.1.8' tabulate cloudpickle 'tqdm>4.29.0' tensorboard numpy 'omegaconf>=2.1,<2.4' \
  'hydra-core>=1.1' black packaging fvcore iopath
"$PY" -c "import detectron2; print('detectron2', detectron2.__version__, 'installed')"
