#!/usr/bin/env bash
# The first check of the CUDA path on a GPU machine, in about 8 minutes on one H100. From the repo
# root:
#
#   bash tools/check_gpu.sh                  # on the GPU machine
#   bash tools/check_gpu.sh --fetch-wheels [PYTHON_VERSION]
#                                            # on a machine with PyPI, for a GPU machine without
#                                            # one: the wheels it lacks into .whl/ (default for
#                                            # Python 3.12)
#   CHECK_GPU_SMOKE=1 bash tools/check_gpu.sh
#                                            # a rehearsal on any machine: the same steps at tiny
#                                            # sizes (on the CPU without CUDA), to catch mistakes
#                                            # before the GPU run
#
# It prints the GPU, runs tests/test_cuda.py, then times the learning rules against native
# autograd (tools/benchmark_rules.py: ResNet-18 and ResNet-50, batch 64 x 224 px, float32 and AMP;
# ResNet-18 compiled, default mode and reduce-overhead (CUDA graphs), against compiled native;
# RetinaNet R50-FPN on a synthetic batch) and the classification trainer against a bare loop
# (tools/benchmark_imagenet.py). Every step has a timeout and the whole run a time budget
# (CHECK_GPU_BUDGET seconds, default 480); a step that fails, times out or finds no time left is
# a row saying so. It ends with ONE markdown table of everything; logs, pytest's JUnit XML and the
# benchmarks' JSON lines are in CHECK_GPU_DIR (default output/check_gpu).
#
# Python: $PYTHON if set; else .venv/bin/python (`make install`) when its torch sees a GPU; else
# python3. That Python's torch is kept: a CUDA build that matches the machine's driver (`make
# install` would download torch==2.14.1, a CUDA 13.0 build of several GB that needs driver
# >= 580). What else the project needs (detectron2 from the sal-detectron2 wheel, fvcore, iopath,
# yacs, omegaconf, pycocotools, ...) comes from .whl/ when it exists (installed with --no-index
# into .gpu-site/, put on PYTHONPATH; the interpreter's own packages are not touched), else from
# PyPI by tools/install_detectron2.sh. A Python without torch gets `make install` first.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# ------------------------------------------------------------------------------------------------
# --fetch-wheels: what a GPU machine without a package registry needs besides torch.
# ------------------------------------------------------------------------------------------------
fetch_wheels() {
  local pyver=${1:-3.12} py=${PYTHON:-python3} dest=.whl tmp
  mkdir -p "$dest"
  tmp=$(mktemp -d)
  # Compiled: pycocotools for the GPU machine's Python (x86-64 Linux).
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" 'pycocotools>=2.0.2' &&
    # Pure Python, as wheels. omegaconf 2.1-2.3 needs antlr4-python3-runtime 4.9.*.
    "$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$dest" \
      'termcolor>=1.1' 'yacs>=0.1.8' 'omegaconf>=2.1,<2.4' 'hydra-core>=1.1' &&
    # Pure Python published as source only: built into wheels here.
    "$py" -m pip wheel --quiet --no-deps -w "$dest" 'antlr4-python3-runtime==4.9.*' fvcore \
      iopath &&
    # detectron2: the wheel tools/install_detectron2.sh installs, tagged py3-none-any as it does.
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
      -d "$tmp" 'sal-detectron2==0.7.2' &&
    mv "$tmp"/sal_detectron2-0.7.2-*.whl "$dest/sal_detectron2-0.7.2-py3-none-any.whl"
  local rc=$?
  rm -rf "$tmp"
  ls -l "$dest"
  return $rc
}
if [[ "${1:-}" == "--fetch-wheels" ]]; then
  fetch_wheels "${2:-}"
  exit
fi

# ------------------------------------------------------------------------------------------------
# Steps, each bounded, and the table
# ------------------------------------------------------------------------------------------------
BUDGET=${CHECK_GPU_BUDGET:-480}
DIR=${CHECK_GPU_DIR:-output/check_gpu}
mkdir -p "$DIR"
rm -f "$DIR"/*.log "$DIR"/*.json "$DIR"/test_cuda.xml
STATUS=$DIR/steps.tsv
: >"$STATUS"
export PYTHONUNBUFFERED=1

# run_step NAME CAP CMD...: runs CMD for at most CAP seconds (less when the budget is nearly
# spent; not at all when it is spent), its output on the console and in $DIR/NAME.log, and
# records its exit status and duration for the table.
run_step() {
  local name=$1 cap=$2 left start rc
  shift 2
  left=$((BUDGET - SECONDS - 15)) # 15 s kept for the table
  if ((left < 20)); then
    echo "== $name: skipped, the time budget (${BUDGET}s) is spent"
    printf '%s\tskipped\t0\n' "$name" >>"$STATUS"
    return
  fi
  ((cap > left)) && cap=$left
  echo "== $name (at most ${cap}s): $*"
  start=$SECONDS
  timeout --kill-after=10 "$cap" "$@" 2>&1 | tee "$DIR/$name.log"
  rc=${PIPESTATUS[0]}
  ((rc == 124 || rc == 137)) && rc="timeout:$cap"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$STATUS"
}

# The table, from the steps' exit statuses, the benchmarks' JSON lines and pytest's JUnit XML.
# Standard library only, so that it runs whatever state the environment is in.
cat >"$DIR/table.py" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET

d = sys.argv[1]
steps = dict((line.split("\t", 1)[0], line.rstrip("\n").split("\t")[1:])
             for line in open(os.path.join(d, "steps.tsv")))


def result(name):
    """(the step's last JSON line, None) when it succeeded, else (None, why not)."""
    if name not in steps:
        return None, "not run: the script stopped before it"
    rc, seconds = steps[name]
    if rc == "skipped":
        return None, "skipped: no time left in the budget"
    if rc.startswith("timeout:"):
        return None, f"TIMED OUT after {rc.split(':')[1]} s (log: {d}/{name}.log)"
    if rc != "0":
        return None, f"FAILED, exit {rc} after {seconds} s (log: {d}/{name}.log)"
    try:
        return json.loads(open(os.path.join(d, name + ".json")).read().splitlines()[-1]), None
    except (OSError, IndexError, ValueError) as e:
        return None, f"no result: {e}"


rows = []
gpu, why = result("gpu")
rows.append(("GPU", "", why or f"{gpu['name']}, {gpu['memory_gib']:.0f} GiB, driver {gpu['driver']}",
             "" if why else f"torch {gpu['torch']}, CUDA {gpu['cuda']}, cuDNN {gpu['cudnn']}"))

xml = os.path.join(d, "test_cuda.xml")
if os.path.exists(xml):
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    rows.append(("tests/test_cuda.py", "",
                 f"{passed} passed, {n['skipped']} skipped, {n['failures']} failed, "
                 f"{n['errors']} errors in {float(suite.get('time', 0)):.0f} s",
                 f"see {d}/tests.log" if n["failures"] + n["errors"] else ""))
else:
    rows.append(("tests/test_cuda.py", "", result("tests")[1] or "no JUnit XML written", ""))

ARCHS = {"resnet18": "ResNet-18 step", "resnet50": "ResNet-50 step",
         "retinanet_R_50_FPN": "RetinaNet R50-FPN iteration"}
for name in ("r18_fp32", "r18_amp", "r18_compiled", "r18_cudagraphs", "r50_fp32", "r50_amp",
             "retinanet"):
    r, why = result(name)
    if r is None:
        rows.append((name, "", why, ""))
        continue
    detection = r["arch"].startswith("retinanet")
    label = (f"{ARCHS[r['arch']]}, batch {r['batch']} x {r['size']} px, "
             + (f"AMP {r['amp_dtype']}" if r["amp"] else "float32")
             + (" (cuDNN's default TF32)" if r["device"] != "cpu" and not r["amp"] else "")
             + (" + channels_last" if r["channels_last"] else "")
             + (f", scale {r['scale']}" if r["scale"] else "")
             + (f", torch.compile mode {r['compile_mode']}" if r.get("compile_mode") else "")
             + (" (SYNTHETIC images, 10 random boxes each)" if detection else ""))
    for i, (variant, v) in enumerate(r["variants"].items()):
        t = v["median_step_s"]
        rows.append(("" if i else label, variant,
                     f"{1 / t:.2f} it/s ({t:.3f} s)" if detection else f"{t:.4f} s/step",
                     f"{v['ratio_to_native']:.3f}x "
                     + ("compiled native's" if "(compiled)" in variant else "native's")
                     + " step time"))

r, why = result("classification")
if r is None:
    rows.append(("classification", "", why, ""))
else:
    rows.append((f"Classification trainer, ResNet-{r['depth']} {r['rule']}, {r['size']} px crops "
                 f"of the generated shapes images, batch {r['batch']}, AMP {r['amp']}, "
                 f"channels_last {r['channels_last']}, {r['workers']} loader workers",
                 "trainer vs bare loop",
                 f"{r['trainer_images_per_s']:.0f} vs {r['bare_images_per_s']:.0f} images/s",
                 f"{r['ratio']:.3f}x the bare loop's images/s"))

print("| measurement | variant | result | ratio |")
print("|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |")
EOF
render_table() {
  echo
  "${PY:-python3}" "$DIR/table.py" "$DIR" 2>/dev/null || python3 "$DIR/table.py" "$DIR"
}
trap 'echo; echo "== stopped; the results so far:"; render_table; exit 130' INT TERM

# ------------------------------------------------------------------------------------------------
# The Python environment
# ------------------------------------------------------------------------------------------------
cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -x .venv/bin/python ]] && cuda_torch .venv/bin/python; then
  PY=.venv/bin/python
else
  PY=python3
fi
if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  echo "== $PY has no torch: make install (a .venv with torch==2.14.1; several GB, beyond the budget)"
  make install PYTHON="$PY" && PY=.venv/bin/python
fi
export PYTHONPATH="$REPO/.gpu-site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
NEEDED="detectron2 fvcore iopath yacs omegaconf termcolor pycocotools"
have_deps() {
  "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if all(map(u.find_spec, sys.argv[1:])) else 1)' \
    $NEEDED
}
if ! have_deps; then
  if [[ -d .whl ]]; then
    # By name, so that pip picks the wheels that fit this Python.
    run_step setup 120 "$PY" -m pip install --quiet --no-index --find-links .whl --no-deps \
      --no-compile --upgrade --target .gpu-site sal-detectron2 fvcore iopath yacs termcolor \
      omegaconf antlr4-python3-runtime hydra-core pycocotools
  else
    run_step setup 180 bash tools/install_detectron2.sh "$PY"
  fi
  have_deps || echo "== still missing one of: $NEEDED. Without a package registry: run" \
    "'bash tools/check_gpu.sh --fetch-wheels' where PyPI is reachable and bring .whl/ along."
fi

# ------------------------------------------------------------------------------------------------
# The GPU
# ------------------------------------------------------------------------------------------------
echo "== nvidia-smi"
timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ||
  echo "nvidia-smi failed or is missing"
cat >"$DIR/gpu.py" <<'EOF'
import json, subprocess, sys
import torch

print("python", sys.version.split()[0], "torch", torch.__version__, "CUDA build", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device (no GPU, or a driver older than this torch's CUDA build)")
try:
    smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    driver = subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout.split()[0]
except (OSError, IndexError, subprocess.SubprocessError):
    driver = "?"
info = {
    "name": torch.cuda.get_device_name(0),
    "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
    "driver": driver,
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(),
}
print("GPU:", info)
with open(sys.argv[1], "w") as f:
    json.dump(info, f)
EOF
run_step gpu 60 "$PY" "$DIR/gpu.py" "$DIR/gpu.json"

# ------------------------------------------------------------------------------------------------
# Tests, then benchmarks
# ------------------------------------------------------------------------------------------------
run_step tests 200 "$PY" -m pytest tests/test_cuda.py -ra -q -p no:cacheprovider \
  -o timeout=150 --junitxml "$DIR/test_cuda.xml"

if [[ "${CHECK_GPU_SMOKE:-0}" == 1 ]]; then # the rehearsal: tiny sizes
  CLS=(--batch 2 --size 32 --rounds 1 --steps 1)
  DET=(--batch 1 --size 128 --rounds 1 --steps 1)
  IMG=(--rounds 1 --iters 2 --warmup 1)
  IMG_OPTS=(INPUT.CLASSIFICATION.SIZE 32 SOLVER.IMS_PER_BATCH 8 DATALOADER.NUM_WORKERS 1)
else
  CLS=(--batch 64 --size 224 --rounds 5 --steps 3)
  DET=(--batch 8 --size 800 --rounds 3 --steps 2)
  IMG=(--rounds 5 --iters 10 --warmup 5)
  IMG_OPTS=(SOLVER.IMS_PER_BATCH 128 DATALOADER.NUM_WORKERS 12)
fi
BENCH=("$PY" tools/benchmark_rules.py)
run_step r18_fp32 50 "${BENCH[@]}" --arch resnet18 "${CLS[@]}" --json "$DIR/r18_fp32.json"
run_step r18_amp 50 "${BENCH[@]}" --arch resnet18 "${CLS[@]}" --amp --channels-last \
  --json "$DIR/r18_amp.json"
run_step r50_fp32 60 "${BENCH[@]}" --arch resnet50 "${CLS[@]}" --json "$DIR/r50_fp32.json"
run_step r50_amp 60 "${BENCH[@]}" --arch resnet50 "${CLS[@]}" --amp --channels-last \
  --json "$DIR/r50_amp.json"
run_step r18_compiled 90 "${BENCH[@]}" --arch resnet18 "${CLS[@]}" --compile --no-eager \
  --json "$DIR/r18_compiled.json"
run_step r18_cudagraphs 90 "${BENCH[@]}" --arch resnet18 "${CLS[@]}" --compile --no-eager \
  --compile-mode reduce-overhead --json "$DIR/r18_cudagraphs.json"
run_step retinanet 70 "${BENCH[@]}" --arch retinanet_R_50_FPN "${DET[@]}" \
  --rules backprop sign_symmetry --scale mean_abs --json "$DIR/retinanet.json"
run_step classification 70 "$PY" tools/benchmark_imagenet.py \
  --config-file configs/ImageNet/resnet18_sign_symmetry.yaml "${IMG[@]}" \
  --json "$DIR/classification.json" "${IMG_OPTS[@]}" SOLVER.AMP.ENABLED True \
  MODEL.CLASSIFIER.CHANNELS_LAST True

echo
echo "== tools/check_gpu.sh: ${SECONDS} s in all; logs in $DIR"
render_table
