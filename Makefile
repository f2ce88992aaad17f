# The two commands a new user needs: `make test` and `make demo`; each sets itself up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# Build your own Detectron2 checkout into the venv instead of the registry's sources:
#   make setup DETECTRON2_SOURCE=/path/to/detectron2
DETECTRON2_SOURCE ?=
PYTEST_ARGS ?=

.PHONY: setup test test-all check lint clean

setup: $(STAMP)

# Re-runs only when the pins, the package metadata or the compat layer change.
$(STAMP): requirements.txt pyproject.toml $(wildcard detectron2_compat/*.py) $(if $(DETECTRON2_SOURCE),FORCE)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --requirement requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .
	$(PY) -m detectron2_compat.build $(if $(DETECTRON2_SOURCE),--source $(DETECTRON2_SOURCE))
	$(PY) -m mask_rcnn_ext.check
	@touch $(STAMP)

FORCE:

test: setup
	$(PY) -m pytest -m "not slow" --durations=15 $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

check: setup
	$(PY) -m mask_rcnn_ext.check

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

.PHONY: demo
DEMO_CONFIG ?= configs/Synthetic/mask_rcnn_R_18_FPN_small_cpu.yaml
DEMO_OUTPUT ?= output/demo
# The seed of the pretraining and the training: the same run each time (mask AP 32.9 on
# 2026-12-05; docs/training.md).
DEMO_SEED ?= 0
# The ResNet the demo's detector starts from, pretrained on the set's object crops (the config's
# MODEL.WEIGHTS); made once, then reused.
DEMO_PRETRAINED ?= output/pretrained/R_18_synthetic_small.pth
# Where the builtin synthetic names read the data (mask_rcnn_ext.data.builtin.datasets_root).
DATA_ROOT := $(or $(DETECTRON2_DATASETS),datasets)
DEMO_IMAGES := $(foreach i,0 1 2 3,$(DATA_ROOT)/synthetic_small/val/00000$(i).png)
# The main job on the embedded data: generate the 128 x 160 synthetic set if missing, pretrain the
# ResNet on its object crops if missing, train the detector on CPU, evaluate (box, mask and
# boundary AP), and draw predictions on a few validation images. Run again, it continues an
# interrupted training (--resume), or evaluates the finished one again, and redraws.
demo: setup
	$(PY) datasets/prepare_synthetic.py --set synthetic_small --if-missing
	@test -f $(DEMO_PRETRAINED) || $(PY) -m mask_rcnn_ext.pretrain --config-file $(DEMO_CONFIG) \
		--output $(DEMO_PRETRAINED) SEED $(DEMO_SEED)
	$(PY) train_net.py --config-file $(DEMO_CONFIG) --resume OUTPUT_DIR $(DEMO_OUTPUT) \
		MODEL.WEIGHTS $(DEMO_PRETRAINED) SEED $(DEMO_SEED)
	$(PY) demo.py --config-file $(DEMO_CONFIG) --input $(DEMO_IMAGES) --overwrite \
		--output $(DEMO_OUTPUT)/visualizations --confidence-threshold 0.5 \
		MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth
	@echo "Model, metrics and evaluation in $(DEMO_OUTPUT); pictures in $(DEMO_OUTPUT)/visualizations"

.PHONY: bench
# Speed and memory against stock Detectron2 (not in CI; 13-15 minutes on 2 CPU cores): each
# script writes benchmarks/results/<name>.json; the summary is benchmarks/results/summary.md.
bench: setup
	$(PY) -m benchmarks.roi_align
	$(PY) -m benchmarks.coco_eval
	$(PY) -m benchmarks.inference
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.summary

.PHONY: ablation
# The accuracy study on the 128 x 160 synthetic set (not in CI; about 7 hours on 2 CPU cores):
# FPN, stride-16 and stride-32 variants, 3 seeds each, from one pretrained ResNet; writes
# benchmarks/results/ablation.{json,md,png}. Reruns reuse finished runs.
ablation: setup
	$(PY) datasets/prepare_synthetic.py --set synthetic_small --if-missing
	$(PY) -m benchmarks.ablation

.PHONY: gpu-bundle
# The wheels that benchmarks/gpu_check.sh installs, offline, on a GPU machine that reaches no
# package registry (the device tool's: `bash benchmarks/gpu_check.sh`, carrying gpu_bundle):
# gpu_bundle/, ignored by git, under the tool's 64 MiB (about 19 MiB).
gpu-bundle: setup
	$(PY) -m benchmarks.gpu_bundle --output gpu_bundle

.PHONY: bench-gpu
# On a machine with a CUDA GPU and this set-up (never in CI): the CUDA tests, then RoI pooling, a
# training step and inference against stock Detectron2 on the GPU; results in
# benchmarks/results/cuda/.
GPU_RESULTS := benchmarks/results/cuda
bench-gpu: setup
	$(PY) -c "import torch; assert torch.cuda.is_available(), 'make bench-gpu needs a CUDA GPU'"
	$(PY) -m pytest tests/test_cuda.py tests/test_poolers.py tests/test_roi_ops.py tests/test_triton_kernels.py
	$(PY) -m benchmarks.roi_align --device cuda --output $(GPU_RESULTS)/roi_align.json
	$(PY) -m benchmarks.train_step --device cuda --output $(GPU_RESULTS)/train_step.json
	$(PY) -m benchmarks.inference --device cuda --output $(GPU_RESULTS)/inference.json
