# One entry point for set-up, tests and the demo. Every target creates the virtual environment
# (VENV, default .venv) when it is missing and installs everything into it.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bio_detectron-installed

.PHONY: install test test-fast lint format demo protocol benchmark clean

install: $(STAMP)

$(STAMP): setup.py bio_detectron/_extras.py tools/install_env.sh tools/install_detectron2.sh
	PYTHON=$(PYTHON) bash tools/install_env.sh $(VENV)
	touch $@

test: install
	$(PY) -m pytest tests

# Everything but the tests marked slow (processes, training runs, tracing): under two minutes.
test-fast: install
	$(PY) -m pytest tests -m "not slow"

# ruff.toml: pyflakes and pycodestyle errors, import order, black's format at line length 100.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --select I --fix .
	$(PY) -m ruff format .

# RULES="backprop sign_symmetry feedback_alignment" runs several rules one after the other.
RULES ?= sign_symmetry
demo: install
	$(PY) tools/demo.py --rules $(RULES)

# The seed paper's protocol on the photos set (docs/usage.md): per rule, pre-train ResNet-18 with
# it, detect from that backbone, and from scratch with the same compute; one table.
PROTOCOL_RULES ?= backprop sign_symmetry sign_symmetry_bm kolen_pollack feedback_alignment weight_mirror
protocol: install
	$(PY) tools/protocol.py --rules $(PROTOCOL_RULES) --iters 1600 --pretrain-iters 1600 \
		--output-dir output/protocol

benchmark: install
	$(PY) tools/benchmark_rules.py --batch 16 --size 128 --rounds 41 --steps 1 --compile --scale mean_abs --breakdown
	$(PY) tools/benchmark_rules.py --batch 4 --size 64 --rounds 41 --steps 3 --compile --scale mean_abs --breakdown
	$(PY) tools/benchmark_rules.py --arch vit_tiny --batch 16 --size 128 --rounds 41 --steps 1 --compile --scale mean_abs --breakdown
	$(PY) tools/benchmark_rules.py --arch vit_tiny --batch 4 --size 64 --rounds 41 --steps 3 --compile --scale mean_abs --breakdown
	OMP_NUM_THREADS=1 $(PY) tools/benchmark_imagenet.py --rounds 15 --iters 5 \
		MODEL.DEVICE cpu INPUT.CLASSIFICATION.SIZE 64 SOLVER.IMS_PER_BATCH 16 DATALOADER.NUM_WORKERS 1

clean:
	rm -rf $(VENV) build *.egg-info
