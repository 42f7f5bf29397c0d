# attackpsm -- `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install weights run calibrate test test-slow test-cluster test-all lint format docs bench bench-certify bench-logging clean data-bapps data-pieapp report leaderboard gpu-bundle notebook
DATA ?= data
RESULTS ?= results
REPORT_ARGS ?=

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1  # test-only, see pyproject.toml
	$(PY) -m pip install --quiet --no-deps foolbox==3.3.4 eagerpy==0.30.0 GitPython==3.1.43 gitdb==4.0.11 smmap==5.0.1  # test-only, see pyproject.toml
	touch $@

install: $(VENV)/.installed ## Create .venv and install attackpsm with its dependencies

weights: install ## Fetch and verify all pretrained weights into the cache (run before going offline; MIRROR=dir of official files)
	$(PY) -m attackpsm weights $(if $(MIRROR),--mirror $(MIRROR))

run: weights ## The main job: PGD on LPIPS(Alex), embedded synthetic dataset, 64x64
	$(PY) -m attackpsm

calibrate: weights ## Synthetic set vs BAPPS: clean accuracy (Table 1) and margins (Table 3) per metric
	$(PY) -m attackpsm calibrate $(CALIBRATE_ARGS)

data-bapps: install ## Download the BAPPS 2AFC val set (the paper's) into $(DATA)/bapps (needs internet)
	$(PY) -m attackpsm data download bapps --root $(DATA)/bapps

data-pieapp: install ## Download PieAPP into $(DATA)/pieapp (needs internet; 2.2 GB)
	$(PY) -m attackpsm data download pieapp --root $(DATA)/pieapp

test: weights ## Fast test suite (under 20 minutes on 2 CPU cores)
	$(PY) -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

test-slow: weights ## Slow suites (cluster, notebooks, full attacks); needs launchers/start_slurm.sh for slurm
	$(PY) -m pytest -m "slow or slurm" $(PYTEST_ARGS)

test-cluster: weights ## Real SLURM job arrays: needs a cluster (sudo launchers/start_slurm.sh starts one here)
	ATTACKPSM_REQUIRE_SLURM=1 $(PY) -m pytest -m slurm $(PYTEST_ARGS)

bench: weights ## Engine vs per-triplet loop: throughput, ratio, peak memory, same decisions (bench.json)
	$(PY) -m attackpsm bench engine --out bench.json $(BENCH_ARGS)

bench-certify: weights ## Certification throughput: noisy samples/s of attack=certify, LPIPS(Alex) (bench-certify.json)
	$(PY) -m attackpsm bench certify --metric lpips_alex --out bench-certify.json $(BENCH_ARGS)

bench-logging: weights ## W&B logging overhead: one job with logger=none vs wandb offline (bench-logging.json)
	$(PY) -m attackpsm bench logging --out bench-logging.json $(BENCH_ARGS)

gpu-bundle: weights ## Wheels and weights in .gpu/ for an offline GPU machine; there: launchers/gpu_check.sh OUT_DIR
	PY=$(PY) launchers/gpu_bundle.sh

report: weights ## Paper tables and figures of a results or sweep dir: make report RESULTS=results (writes <dir>/report)
	$(PY) -m attackpsm report $(RESULTS) $(REPORT_ARGS)

notebook: weights ## Execute notebooks/analysis.ipynb on $(RESULTS): a copy with its outputs in $(RESULTS)/analysis.ipynb
	@test -d "$(RESULTS)" || { echo "no $(RESULTS)/ yet: make run (or a sweep) writes it; or make notebook RESULTS=dir"; exit 1; }
	cp notebooks/analysis.ipynb "$(RESULTS)/analysis.ipynb"
	ATTACKPSM_RESULTS="$(abspath $(RESULTS))" $(VENV)/bin/jupyter execute --inplace "$(RESULTS)/analysis.ipynb"
	@echo "-> $(abspath $(RESULTS))/analysis.ipynb (open it in any notebook viewer; the stored notebook stays without outputs)"

# every metric that runs offline; the attacks of the stronger evaluation
LEADERBOARD_METRICS ?= l2,ssim,ms_ssim,cw_ssim,fsimc,gmsd,vif,haarpsi,mdsi,lpips_alex,lpips_vgg,dists,stlpips_alex,stlpips_vgg,elpips_vgg
LEADERBOARD_ATTACKS ?= none,pgd,apgd,apgd_l2,square,square_l2,min_eps,autoattack,fmn
LEADERBOARD_ARGS ?= dataset=synthetic dataset.num_triplets=64 resolution=64
# certified-l2 rows: randomized smoothing of these metrics at this sigma ([-1, 1] scale)
CERTIFY_METRICS ?= lpips_alex,dists,ssim
CERTIFY_SIGMA ?= 0.02
# rows for the other threat-model targets (attack.target): these attacks on these metrics
# (symmetric ones: attack.target=reference needs f(ref, x) = f(x, ref))
TARGET_METRICS ?= l2,ssim,lpips_alex,lpips_vgg,dists
TARGET_ATTACKS ?= apgd
# gradient-masking diagnostics of these metrics (python -m attackpsm diagnose); exit 1 =
# flagged, shown in the leaderboard and the cards, not a failure of the target
DIAGNOSE_METRICS ?= $(LEADERBOARD_METRICS)
DIAGNOSE_ARGS ?=
# negative control: DISTS as the DISTS_pytorch package calls it by default (gradient of the
# pixel stage only) must be flagged; empty = skip it
DIAGNOSE_CONTROL ?= metric=dists metric.require_grad=false

leaderboard: weights ## Robustness leaderboard: sweep metrics x attacks, diagnose each metric, then <dir>/leaderboard/*.json, cards/ + leaderboard.md
	$(PY) -m attackpsm -m logger=none progress=false metric=$(LEADERBOARD_METRICS) attack=$(LEADERBOARD_ATTACKS) paths.results_dir=$(RESULTS) $(LEADERBOARD_ARGS)
	$(PY) -m attackpsm -m logger=none progress=false metric=smoothed metric.base=$(CERTIFY_METRICS) metric.sigma=$(CERTIFY_SIGMA) attack=certify,min_eps_smoothed paths.results_dir=$(RESULTS) $(LEADERBOARD_ARGS)
	$(PY) -m attackpsm -m logger=none progress=false metric=$(TARGET_METRICS) attack=$(TARGET_ATTACKS) attack.target=reference,both paths.results_dir=$(RESULTS) $(LEADERBOARD_ARGS)
	for m in $$(echo $(DIAGNOSE_METRICS) | tr , ' '); do \
		$(PY) -m attackpsm diagnose metric=$$m paths.results_dir=$(RESULTS) $(LEADERBOARD_ARGS) $(DIAGNOSE_ARGS) || [ $$? -eq 1 ] || exit 1; \
	done
	$(if $(DIAGNOSE_CONTROL),$(PY) -m attackpsm diagnose $(DIAGNOSE_CONTROL) paths.results_dir=$(RESULTS) $(LEADERBOARD_ARGS) $(DIAGNOSE_ARGS); test $$? -eq 1 || { echo "negative control not flagged: $(DIAGNOSE_CONTROL)"; exit 1; })
	$(PY) -m attackpsm leaderboard $(RESULTS)

lint: install ## Ruff lint and format check, and the import layers of the package (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

docs: install ## Build the documentation site into site/ (strict: broken links or stale API pages fail)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

format: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## Remove outputs (results/, logs/, site/, caches); keeps .venv and the weights cache
	rm -rf results logs outputs multirun site .pytest_cache .ruff_cache
