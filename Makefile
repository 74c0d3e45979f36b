# MGD (Matching Guided Distillation) on the pinned Detectron2.
# Every variable below can be overridden on the command line, e.g. `make base DEPTH=18 NUM_GPUS=8`.
# `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON            ?= python
# Two tested Detectron2 targets: `pin` (default) is the MGD authors' PR #1820, where the paper's
# numbers come from; `latest` is today's upstream main. Each lives in its own folder, so both can
# be built side by side. DETECTRON2_DIR=<path> points at your own checkout instead.
DETECTRON2        ?= pin
DETECTRON2_PIN_COMMIT    := 369a57d333ff9c05c9dd42ab3c3d8156860dc710
DETECTRON2_LATEST_COMMIT := 02b5c4e295e990042a714712c21dc79b731e8833
DETECTRON2_REPO   ?= https://github.com/facebookresearch/detectron2.git
ifeq ($(DETECTRON2),pin)
DETECTRON2_COMMIT ?= $(DETECTRON2_PIN_COMMIT)
DETECTRON2_DIR    ?= detectron2
else ifeq ($(DETECTRON2),latest)
DETECTRON2_COMMIT ?= $(DETECTRON2_LATEST_COMMIT)
DETECTRON2_DIR    ?= detectron2-latest
else
$(error error: DETECTRON2 must be pin or latest, got '$(DETECTRON2)' (DETECTRON2_DIR=<path> uses your own checkout))
endif
# Exported: a make run by a command of this one (a test, the demo) uses the same checkout.
export DETECTRON2 DETECTRON2_DIR
# Python packages a target needs beyond requirements.txt (today's Detectron2 imports omegaconf and
# hydra): installed into DETECTRON2_DIR/mgd-python-deps, never into the environment itself.
DETECTRON2_EXTRA_REQUIREMENTS = $(wildcard requirements-detectron2-$(DETECTRON2).txt)
DEPTH             ?= 50
# The detector: retinanet (the paper's) or faster_rcnn (Faster R-CNN; Mask R-CNN: add
# OPTS="MODEL.MASK_ON True" on a set with masks). It picks the configs below and the folders of
# every step (retinanet keeps the paper's names: output/base-R50, weights/T50-S18.pkl, output/mgd).
DETECTOR          ?= retinanet
DETECTOR_TAG       = $(if $(filter-out retinanet,$(DETECTOR)),-$(DETECTOR))
NUM_GPUS          ?= 1
# Several machines: e.g. LAUNCH_ARGS="--num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT"
LAUNCH_ARGS       ?=
OUTPUT_DIR        ?= output
WEIGHTS_DIR       ?= weights
OPTS              ?=
PYTEST_ARGS       ?=
# Weights: ImageNet torchvision ResNets, downloaded (RANDOM_INIT=1: random init, no download;
# such files carry a mark that `make weights` and every run read).
RANDOM_INIT       ?=
# Distillation inputs and outputs.
TEACHER           ?= $(OUTPUT_DIR)/base$(DETECTOR_TAG)-R50/model_final.pth
STUDENT           ?= $(WEIGHTS_DIR)/r-18.pkl
MERGED            ?= $(WEIGHTS_DIR)/T50-S18$(DETECTOR_TAG).pkl
MGD_OUTPUT        ?= $(OUTPUT_DIR)/mgd$(DETECTOR_TAG)
EVAL_TEACHER      ?=
# convert-all writes the student to X.pkl and, with EVAL_TEACHER=1, the teacher to X.teacher.pkl
EVAL_WEIGHTS      ?= $(MGD_OUTPUT)/model_final$(if $(EVAL_TEACHER),.teacher).pkl
EVAL_OUTPUT       ?= $(MGD_OUTPUT)/eval$(if $(EVAL_TEACHER),-teacher)
# (each Detectron2 target has its own demo folder: a step whose output exists is kept)
DEMO_DIR          ?= output/demo$(DETECTOR_TAG)$(if $(filter latest,$(DETECTRON2)),-latest)
# An evaluation into a folder that holds one moves the earlier one to EVAL_OUTPUT/previous-N;
# EVAL_REPLACE=1 deletes it instead.
EVAL_REPLACE      ?=
# merge refuses a teacher not deeper than the student; ALLOW_ANY_TEACHER=1 allows it (experiments)
ALLOW_ANY_TEACHER ?=
# make plots: run folders to plot and tabulate, "NAME=DIR ..." or "DIR ..." (empty: the demo's)
RUNS              ?= $(RUN)
PLOTS_DIR         ?= $(if $(strip $(RUNS)),$(OUTPUT_DIR)/plots,$(DEMO_DIR)/plots)
# The demo trains its two students with seeds 1..SEEDS (the teacher once) and reports mean and spread.
SEEDS             ?= 1
# Your own COCO-format sets: NAME JSON IMAGE_ROOT triples, registered for base/distill/probe/eval
# (train_net.py --dataset); name them in DATASETS.TRAIN / DATASETS.TEST through OPTS.
DATASETS          ?=
# Input sizes, the same for base, distill, probe and eval (train_net.py --scale): coco (the
# configs': 640-800 px), data (the training images' own size, from DATASETS' JSON) or a shorter side in px.
SCALE             ?= coco
# base/distill: RESUME=1 continues the run in its output folder; FRESH=1 starts it over (the
# earlier run's files move to <folder>-replaced-<date>/). A folder with a run needs one of them.
RESUME            ?=
FRESH             ?=
# The loss-factor probe (make probe): its output folder, the file of its suggested
# MGD.LOSS_FACTORS override, and more train_net.py --probe-* flags.
PROBE_OUTPUT      ?= $(OUTPUT_DIR)/probe
PROBE_FACTORS     ?= $(PROBE_OUTPUT)/loss_factors.txt
PROBE_ARGS        ?=
USER_VARIABLES := PYTHON DETECTRON2 DETECTRON2_REPO DETECTRON2_COMMIT DETECTRON2_DIR DEPTH DETECTOR NUM_GPUS LAUNCH_ARGS OUTPUT_DIR \
                  WEIGHTS_DIR OPTS RANDOM_INIT TEACHER STUDENT MERGED MGD_OUTPUT \
                  EVAL_TEACHER EVAL_WEIGHTS EVAL_CONFIG EVAL_OUTPUT EVAL_REPLACE BASE_CONFIG MGD_CONFIG \
                  ALLOW_ANY_TEACHER DEMO_DIR SEEDS DATASETS SCALE RESUME FRESH PROBE_OUTPUT PROBE_FACTORS \
                  PROBE_ARGS RUNS PLOTS_DIR PYTEST_ARGS PYTEST_WORKERS LATEST_MARKS STUDY_PROTOCOL STUDY_DIR STUDY_PUBLISH

# Make the in-place Detectron2 build and this repository importable for every command below
# (mgd/bootstrap.py does the same for a command run by hand: it reads MGD_DETECTRON2_DIR).
# (The user's own PYTHONPATH is kept once, so that a recursive make for the other target does
# not inherit this one's checkout.)
export MGD_USER_PYTHONPATH ?= $(PYTHONPATH)
export MGD_DETECTRON2_DIR := $(abspath $(DETECTRON2_DIR))
export PYTHONPATH := $(MGD_DETECTRON2_DIR):$(MGD_DETECTRON2_DIR)/mgd-python-deps:$(CURDIR)$(if $(MGD_USER_PYTHONPATH),:$(MGD_USER_PYTHONPATH))

# OpenMP threads sleep rather than spin while they wait, in every command run here (a value
# in the environment is kept): the policy and its reason live in mgd/runtime.py, which
# train_net.py applies when run by hand.
ifeq ($(origin OMP_WAIT_POLICY),undefined)
export OMP_WAIT_POLICY := $(shell cd "$(CURDIR)" && $(PYTHON) -m mgd.runtime OMP_WAIT_POLICY)
endif

D2_CONFIGS := $(DETECTRON2_DIR)/configs/COCO-Detection
D2_PACKAGE := $(DETECTRON2_DIR)/detectron2
D2_BUILT    = $(wildcard $(D2_PACKAGE)/_C*.so)
# Configs are used where they are; their _BASE_ (../Base-RetinaNet.yaml) resolves against the
# checkout's configs/COCO-Detection/ (train_net.py). Their copies made by `make overlay` work too.
# RANDOM_INIT=1 (weights made by `make weights RANDOM_INIT=1`): the configs that train from
# random init (the demo's recipe: FREEZE_AT 0, GroupNorm in each stage's last block, gradient clipping).
RECIPE             = $(if $(RANDOM_INIT),_random_init)
BASE_CONFIG       ?= configs/$(DETECTOR)_torchvision_R_$(DEPTH)_FPN_1x$(RECIPE).yaml
MGD_CONFIG        ?= configs/mgd_$(DETECTOR)_R50_R18_FPN_1x$(RECIPE).yaml
EVAL_CONFIG       ?= $(MGD_CONFIG)

.PHONY: help
help: ## list the targets and the variables
	@echo "Targets:"
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo "Variables (current value):"
	@$(foreach v,$(USER_VARIABLES),printf "  %-18s %s\n" "$(v)" "$($(v))";)

print-%:
	@echo '$($*)'

# train_net.py arguments for DATASETS (NAME JSON IMAGE_ROOT triples)
DATASET_ARGS = $(if $(strip $(DATASETS)),$(shell printf -- '--dataset %s %s %s ' $(DATASETS)))
# Input checks, run before anything else of a target: `$(call require,FILE,WHAT,HOW TO MAKE IT)`.
require = test -e "$(1)" || { echo "error: $(2) $(1) not found; $(3)" >&2; exit 2; }
check_datasets = n=$(words $(DATASETS)); [ $$((n % 3)) -eq 0 ] || { \
    echo "error: DATASETS takes NAME JSON IMAGE_ROOT triples, got $$n words: $(DATASETS)" >&2; exit 2; }
# train_net.py flags of the training targets (OPTS holds KEY VALUE config overrides only:
# train_net.py points a flag found there to its variable)
RUN_FLAGS = --scale $(SCALE)$(if $(RESUME), --resume)$(if $(FRESH), --fresh)

# The variables given on make's command line or exported by the shell (e.g. the README's
# `export DATASETS=... OPTS=...`), as shell words: the command that resumes a training target
# (RESUME=1) in a new shell, which train_net.py prints after Ctrl-C or when it refuses to
# restart over a run (MGD_RESUME_COMMAND; `make demo` sets its own).
open_paren := (
close_paren := )
needs_quotes = $(or $(if $(1),,empty),$(word 2,$(1)),$(findstring ',$(1)),$(findstring ",$(1)),$(findstring \
    $(open_paren),$(1)),$(findstring $(close_paren),$(1)),$(findstring $$,$(1)),$(findstring *,$(1)),$(findstring \
    ;,$(1)),$(findstring &,$(1)),$(findstring |,$(1)),$(findstring <,$(1)),$(findstring >,$(1)),$(findstring \\,$(1)))
shell_word = $(if $(call needs_quotes,$(1)),'$(subst ','\'',$(1))',$(1))
given_variables = $(foreach v,$(filter-out RESUME FRESH,$(USER_VARIABLES)),$(if $(filter command line environment%,\
    $(origin $(v))),$(v)=$(call shell_word,$($(v)))))
base distill: export MGD_RESUME_COMMAND ?= make $@ $(strip $(given_variables)) RESUME=1

.PHONY: install
install: ## install the pinned Python requirements, then this checkout's packages (mgd, mgd_tools) in editable mode
	@if $(PYTHON) scripts/check_requirements.py requirements.txt; then echo "requirements: all installed"; \
	else echo "+ $(PYTHON) -m pip install -r requirements.txt"; $(PYTHON) -m pip install -q -r requirements.txt; fi
	@# installed when `import mgd` from outside this folder, without PYTHONPATH, finds this checkout's
	@if (cd / && env -u PYTHONPATH $(PYTHON) -c "import os, sys, mgd; \
	    sys.exit(os.path.realpath(os.path.dirname(mgd.__file__)) != os.path.realpath(sys.argv[1]))" $(CURDIR)/mgd) 2>/dev/null; \
	then echo "mgd-detectron2: installed (editable, this checkout)"; \
	else echo "+ $(PYTHON) -m pip install --no-deps --no-build-isolation -e ."; \
	    $(PYTHON) -m pip install -q --no-deps --no-build-isolation -e . ; fi

.PHONY: detectron2
detectron2: install ## clone Detectron2 at DETECTRON2's commit (pin: PR #1820; latest: today's main) into DETECTRON2_DIR, apply compat edits, build its C++ ops
	bash scripts/get_detectron2.sh $(DETECTRON2_DIR) $(DETECTRON2_REPO) $(DETECTRON2_COMMIT) $(DETECTRON2_EXTRA_REQUIREMENTS)

.PHONY: overlay
overlay: ## copy d2/ modules (d2/X/y.py -> detectron2/X/y.py) and configs/ into the Detectron2 checkout (idempotent; train_net.py and the scripts refresh a stale copy themselves)
	@$(PYTHON) scripts/overlay.py $(DETECTRON2_DIR) --make-hint "make detectron2$(if $(filter latest,$(DETECTRON2)), DETECTRON2=latest)"

# `make test` tests both Detectron2 targets: the whole suite on the pin (and the pin's own tests),
# then the Detectron2 tests on today's Detectron2 (and its own tests), which it builds first when
# git can reach upstream. `make test DETECTRON2=latest` (or DETECTRON2_DIR=...) tests that
# checkout alone. PYTEST_MARKS selects tests by marker (e.g. "not slow").
# The latest pass runs the Detectron2 tests that are not marked slow, and of the slow ones those
# marked latest_pass: resume, several processes, mixed precision and Ctrl-C, where the versions
# differ (~12 min here instead of ~21 for all). The other slow ones (whole chains through make:
# the demo, the README's own-data block, make weights/base/eval end to end) exercise the same
# overlay code; `make test DETECTRON2=latest` runs them all, and `make demo DETECTRON2=latest`
# the chain.
PYTEST_MARKS      ?=
LATEST_MARKS      ?= not slow or latest_pass
# Tests run in PYTEST_WORKERS processes side by side (pytest-xdist; default: one per CPU core;
# on 2 cores side by side the pin's suite took 11 min instead of 20, see docs/testing.md); the tests of
# one module stay in one process (--dist loadscope), so a module's shared fixture (the demo chain,
# the bad-input cases) is made once. PYTEST_WORKERS=0 runs them in pytest's own process (pdb).
# Detectron2's own tests (test-detectron2) are spread test by test (--dist worksteal). Without
# pytest-xdist installed (`make install` installs it) they run in one process.
PYTEST_WORKERS    ?= $(shell nproc 2>/dev/null || echo 1)
_pytest_workers    = $(if $(and $(filter-out 0,$(PYTEST_WORKERS)),$(shell $(PYTHON) -c 'import xdist' 2>/dev/null && echo 1)),\
                       -n $(PYTEST_WORKERS) --dist $(1))
TEST_LATEST       ?= $(if $(and $(filter pin,$(DETECTRON2)),$(filter file,$(origin DETECTRON2_DIR))),1)
ONLY_DETECTRON2   ?=
_test_only         = $(if $(ONLY_DETECTRON2),detectron2)
_test_marks        = $(strip $(_test_only) $(if $(and $(_test_only),$(PYTEST_MARKS)),and) $(if $(PYTEST_MARKS),($(PYTEST_MARKS))))

.PHONY: test
test: install ## build Detectron2 when possible, then run every test (both Detectron2 targets; Detectron2 tests skip without a build)
	@if [ -n "$(D2_BUILT)" ] || $(MAKE) --no-print-directory detectron2; then \
	    $(MAKE) --no-print-directory overlay; \
	else echo "Detectron2 tests will be skipped: $(DETECTRON2_DIR) could not be built (see the error above)"; fi
	@$(if $(TEST_LATEST),$(MAKE) --no-print-directory latest-for-tests)
	$(PYTHON) -m pytest $(call _pytest_workers,loadscope) $(if $(_test_marks),-m "$(_test_marks)") $(PYTEST_ARGS)
	@if ls $(D2_PACKAGE)/_C*.so >/dev/null 2>&1; then $(MAKE) --no-print-directory test-detectron2; fi
	@$(if $(TEST_LATEST),if ls detectron2-latest/detectron2/_C*.so >/dev/null 2>&1; then \
	    echo "=== the Detectron2 tests on today's Detectron2 (DETECTRON2=latest)"; \
	    $(MAKE) --no-print-directory test DETECTRON2=latest DETECTRON2_DIR=detectron2-latest ONLY_DETECTRON2=1 \
	        TEST_LATEST= PYTEST_MARKS='$(if $(PYTEST_MARKS),($(PYTEST_MARKS)) and )($(LATEST_MARKS))' PYTEST_ARGS='$(PYTEST_ARGS)'; fi)

.PHONY: latest-for-tests
latest-for-tests: # build today's Detectron2 for `make test`; skipped with one line when git cannot reach upstream
	@rc=0; $(MAKE) --no-print-directory detectron2 DETECTRON2=latest DETECTRON2_DIR=detectron2-latest || rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "today's Detectron2 (DETECTRON2=latest) is not tested: git cannot reach upstream"; \
	elif [ $$rc -ne 0 ]; then exit $$rc; else $(MAKE) --no-print-directory overlay DETECTRON2=latest DETECTRON2_DIR=detectron2-latest; fi

.PHONY: test-fast
test-fast: ## run the tests without the slow end-to-end ones
	$(MAKE) --no-print-directory test PYTEST_MARKS="not slow"

.PHONY: test-detectron2
test-detectron2: ## Detectron2's own tests/ in DETECTRON2_DIR; fails on a failure not in tests/detectron2_expected_failures.$(DETECTRON2).txt
	@test -n "$(D2_BUILT)" || { echo "error: Detectron2 is not built in $(DETECTRON2_DIR); run 'make detectron2' first" >&2; exit 2; }
	$(PYTHON) scripts/run_detectron2_tests.py $(DETECTRON2_DIR) tests/detectron2_expected_failures.$(DETECTRON2).txt $(call _pytest_workers,worksteal)

CUDA_CHECK_DIR   ?= build/cuda-check/detectron2
CUDA_CHECK_ARCHS ?= 9.0
CUDA_CHECK_JOBS  ?= 1
.PHONY: check-cuda-build
check-cuda-build: ## FORCE_CUDA=1 build of a copy in build/cuda-check (no GPU needed; 6 min of CPU); checks every .cu compiled, _C reports CUDA
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST='$(CUDA_CHECK_ARCHS)' MAX_JOBS=$(CUDA_CHECK_JOBS) bash scripts/get_detectron2.sh \
	    $(CUDA_CHECK_DIR) $(if $(wildcard $(DETECTRON2_DIR)/.git),$(DETECTRON2_DIR),$(DETECTRON2_REPO)) $(DETECTRON2_COMMIT)
	$(PYTHON) scripts/check_cuda_build.py $(CUDA_CHECK_DIR)

.PHONY: clean
clean: ## remove caches (keeps detectron2/, weights/, datasets/ and outputs)
	rm -rf .pytest_cache $$(find . -name __pycache__ -not -path './$(DETECTRON2_DIR)/*')

# ---------------------------------------------------------------- the five steps of MGD
# Each training target prints the command it runs; NUM_GPUS, OUTPUT_DIR and OPTS work on all.

.PHONY: weights
weights: ## get torchvision R18/R50 (download; RANDOM_INIT=1 for random init) and convert with the pin's converter
	@$(PYTHON) scripts/get_weights.py --weights-dir $(WEIGHTS_DIR) --checkout $(DETECTRON2_DIR)$(if $(RANDOM_INIT), --random-init)

.PHONY: base
base: check-base overlay ## train the base DETECTOR-R{DEPTH} from WEIGHTS_DIR/r-{DEPTH}.pkl (DEPTH=50|18; DETECTOR=retinanet|faster_rcnn; RESUME=1 continues)
	$(PYTHON) train_net.py --num-gpus $(NUM_GPUS) $(LAUNCH_ARGS) $(DATASET_ARGS) $(RUN_FLAGS) --config-file $(BASE_CONFIG) \
	    MODEL.WEIGHTS $(WEIGHTS_DIR)/r-$(DEPTH).pkl OUTPUT_DIR $(OUTPUT_DIR)/base$(DETECTOR_TAG)-R$(DEPTH) $(OPTS)

.PHONY: merge
merge: check-merge ## merge TEACHER (R50 base checkpoint) and STUDENT (r-18.pkl) into MERGED (the teacher must be deeper: ALLOW_ANY_TEACHER=1 to override)
	$(PYTHON) -m mgd_tools.merge_models $(TEACHER) $(STUDENT) $(MERGED)$(if $(ALLOW_ANY_TEACHER), --allow-shallow-teacher)

.PHONY: probe
probe: check-probe overlay ## the loss-factor probe on MERGED: each position's loss as training sees it, factors for ~0.02 into PROBE_FACTORS
	$(PYTHON) train_net.py --probe-loss-factors $(DATASET_ARGS) --scale $(SCALE) --probe-output $(PROBE_FACTORS) \
	    $(PROBE_ARGS) --config-file $(MGD_CONFIG) MODEL.WEIGHTS $(MERGED) OUTPUT_DIR $(PROBE_OUTPUT) $(OPTS)

.PHONY: distill
distill: check-distill overlay ## distil the student from the teacher with MGD, starting from MERGED (RESUME=1 continues)
	$(PYTHON) train_net.py --num-gpus $(NUM_GPUS) $(LAUNCH_ARGS) $(DATASET_ARGS) $(RUN_FLAGS) --config-file $(MGD_CONFIG) \
	    MODEL.WEIGHTS $(MERGED) OUTPUT_DIR $(MGD_OUTPUT) $(OPTS)

.PHONY: check-base check-merge check-distill check-probe check-eval
check_detector = case "$(DETECTOR)" in retinanet|faster_rcnn) ;; *) echo "error: DETECTOR must be retinanet or \
    faster_rcnn (Mask R-CNN: DETECTOR=faster_rcnn OPTS=\"MODEL.MASK_ON True\"), got '$(DETECTOR)'" >&2; exit 2;; esac
check-base:
	@$(check_detector)
	@case "$(DEPTH)" in 18|50) ;; *) \
	    echo "error: DEPTH must be 18 or 50 (MGD's R50 teacher, R18 student), got '$(DEPTH)'" >&2; exit 2;; esac
	@$(call require,$(BASE_CONFIG),BASE_CONFIG,pass BASE_CONFIG=a config file (e.g. configs/...))
	@$(call require,$(WEIGHTS_DIR)/r-$(DEPTH).pkl,the ImageNet weights,run \`make weights\` first)
	@$(check_datasets)
check-merge:
	@$(check_detector)
	@$(call require,$(TEACHER),the teacher checkpoint TEACHER,run \`make base DEPTH=50$(if $(DETECTOR_TAG), DETECTOR=$(DETECTOR))\` or pass TEACHER=...)
	@$(call require,$(STUDENT),the student weights STUDENT,run \`make weights\` or pass STUDENT=...)
check-distill:
	@$(check_detector)
	@$(call require,$(MGD_CONFIG),MGD_CONFIG,pass MGD_CONFIG=a config file (e.g. configs/...))
	@$(call require,$(MERGED),the merged teacher/student checkpoint MERGED,run \`make merge\` or pass MERGED=...)
	@$(check_datasets)
check-probe:
	@$(check_detector)
	@$(call require,$(MGD_CONFIG),MGD_CONFIG,pass MGD_CONFIG=a config file (e.g. configs/...))
	@$(call require,$(MERGED),the merged teacher/student checkpoint MERGED,run \`make merge\` or pass MERGED=...)
	@$(check_datasets)
check-eval:
	@$(check_detector)
	@$(check_datasets)

.PHONY: convert-all
convert-all: ## split the student out of every MGD_OUTPUT/X.pth into X.pkl (EVAL_TEACHER=1: the teacher into X.teacher.pkl)
	$(PYTHON) scripts/convert_all.py $(MGD_OUTPUT) $(if $(EVAL_TEACHER),--eval-teacher)

.PHONY: eval
eval: check-eval overlay ## COCO evaluation of EVAL_WEIGHTS with EVAL_CONFIG into EVAL_OUTPUT (the student; EVAL_TEACHER=1 the teacher); an earlier one there is kept in previous-N
	$(PYTHON) train_net.py --eval-only --num-gpus $(NUM_GPUS) $(LAUNCH_ARGS) $(DATASET_ARGS) --scale $(SCALE) \
	    --config-file $(EVAL_CONFIG) $(if $(EVAL_TEACHER),--eval-teacher) $(if $(EVAL_REPLACE),--replace-eval) \
	    MODEL.WEIGHTS $(EVAL_WEIGHTS) OUTPUT_DIR $(EVAL_OUTPUT) $(OPTS)

# ---------------------------------------------------------------- demo, plots, benchmarks

.PHONY: demo
# (the pin is cloned and built first when it is not built yet; `make detectron2` re-checks a built one)
demo: install $(if $(D2_BUILT),,detectron2) overlay ## the whole chain on CPU on a synthetic COCO set, no download (SEEDS=n: n student seeds; DETECTOR=faster_rcnn); AP and matched-cost tables, plots
	@$(check_detector)
	DEMO_DIR=$(DEMO_DIR) SEEDS=$(SEEDS) DETECTOR=$(DETECTOR) PYTHON=$(PYTHON) MAKE=$(MAKE) D2_CONFIGS=$(D2_CONFIGS) \
	    bash scripts/run_demo.sh

.PHONY: demo-clean
demo-clean: ## delete the demo's outputs (DEMO_DIR) so the next `make demo` redoes every step
	rm -rf $(DEMO_DIR)

.PHONY: plots
plots: ## results table and PNG plots (losses, matching cost, AP) of RUNS="NAME=DIR ..." into PLOTS_DIR (no RUNS: the demo's)
ifeq ($(strip $(RUNS)),)
	$(PYTHON) scripts/plot_runs.py --runs teacher=$(DEMO_DIR)/base$(DETECTOR_TAG)-R50 student=$(DEMO_DIR)/seed1/base$(DETECTOR_TAG)-R18 \
	    mgd=$(DEMO_DIR)/seed1/mgd --ap-table $(DEMO_DIR)/results.json --out $(PLOTS_DIR)
else
	$(PYTHON) scripts/summarize_results.py --runs $(RUNS) --write $(PLOTS_DIR)/results.json
	$(PYTHON) scripts/plot_runs.py --runs $(RUNS) --ap-table $(PLOTS_DIR)/results.json --out $(PLOTS_DIR)
endif

.PHONY: matched-cost
matched-cost: install overlay ## matched cost to TEACHER of each student run of RUNS="NAME=DIR ..." (its model_final.pth) on DATASETS.TEST[0], with MGD_CONFIG, SCALE, DATASETS, OPTS -> DIR/matched_cost.json (make plots reads it)
	@test -n "$(strip $(RUNS))" || { echo "error: give the student runs to measure: make matched-cost RUNS=\"student=output/base-R18 mgd=output/mgd\"" >&2; exit 2; }
	@$(call require,$(TEACHER),teacher checkpoint (TEACHER),train it with make base DEPTH=50 or set TEACHER=)
	@$(check_datasets)
	@for run in $(RUNS); do dir=$${run#*=}; \
	    test -e "$$dir/model_final.pth" || { echo "error: $$dir/model_final.pth not found: RUNS names finished student runs" >&2; exit 2; }; done
	for run in $(RUNS); do dir=$${run#*=}; $(PYTHON) scripts/measure_matched_cost.py $(DATASET_ARGS) --scale $(SCALE) \
	    --config-file $(MGD_CONFIG) --teacher $(TEACHER) --student $$dir/model_final.pth --out $$dir/matched_cost.json \
	    $(OPTS) || exit $$?; done

.PHONY: study
# The study (docs/study.md): on a CUDA machine the GPU protocol, else the CPU one (~2 h on 2 cores)
STUDY_PROTOCOL    ?= configs/study/$(shell $(PYTHON) -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")').yaml
STUDY_DIR         ?= $(OUTPUT_DIR)/study-$(basename $(notdir $(STUDY_PROTOCOL)))
STUDY_PUBLISH     ?=
study: install $(if $(D2_BUILT),,detectron2) overlay ## does MGD make the student better? every arm and seed of STUDY_PROTOCOL into STUDY_DIR (Ctrl-C, then the same command, continues)
	$(PYTHON) scripts/run_study.py --protocol $(STUDY_PROTOCOL) --out $(STUDY_DIR)$(if $(STUDY_PUBLISH), --publish $(STUDY_PUBLISH))

.PHONY: bench-core
bench-core: ## time the MGD core (matching update, loss + AMP) vs the original's solver approach
	$(PYTHON) benchmarks/bench_core.py

.PHONY: bench
# BENCH_ARGS reach bench_step.py, e.g. BENCH_ARGS="--device cuda --reps 5" (default: CPU, float32 +
# bfloat16 + float16 with its GradScaler); GPU_CHECK_ARGS reach scripts/gpu_check.py (--budget, --skip-build)
BENCH_ARGS        ?=
GPU_CHECK_ARGS    ?=
bench: bench-core ## all benchmarks: the core, then the MGD training step of DETECTOR (float32, bfloat16, float16 + GradScaler) vs its floor and the double pass
	@$(check_detector)
	$(PYTHON) benchmarks/bench_step.py --detector $(DETECTOR) $(BENCH_ARGS)

.PHONY: gpu-check
gpu-check: ## on a CUDA machine: build the CUDA ops, GPU tests, benchmarks (float32/float16/bfloat16), an NCCL MGD run; one report in output/gpu-check (< 8 min on one H100)
	@$(PYTHON) scripts/gpu_check.py --out $(OUTPUT_DIR)/gpu-check $(GPU_CHECK_ARGS)
