# layerfilm — the two commands a fresh clone needs:
#   make demo   set up .venv and render sample_checkpoints/ to films/sample.webm and .gif
#   make test   set up .venv (with torch, CPU build) and run the whole test suite
# Both install the exact versions in constraints/test.txt (the golden frames were recorded with
# them); `make test-latest` runs the suite with today's newest releases instead (not in CI).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LF     := $(VENV)/bin/layerfilm
# torch: the CPU build pinned here (an unpinned torch pulls a multi-GB CUDA build).
TORCH  ?= torch==2.13.0
LOCK   ?= constraints/test.txt
LATEST ?= .venv-latest
EXTRAS := .[torch,test,dask]

.PHONY: demo demo-model test test-latest lock sample bench clean batch

$(VENV)/.base: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) -e .
	$(PY) -m layerfilm.warmup
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install --quiet -c $(LOCK) "$(TORCH)"
	$(PY) -m pip install --quiet -c $(LOCK) -e "$(EXTRAS)"
	@# The viewer page's tests open it in headless Chromium (Debian's package).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "warning: no chromium: the viewer page tests will be skipped"
	touch $@

demo: $(VENV)/.base
	@mkdir -p films
	$(LF) render sample_checkpoints films/sample.webm
	$(LF) render sample_checkpoints films/sample.gif --size 960x540
	@echo
	@echo "Films written: $(CURDIR)/films/sample.webm and $(CURDIR)/films/sample.gif"

# The sample run, run: each checkpoint's answers to three sums as captions, and the hidden
# states of its probe (every "a + 40 =") layer by layer, where the answers form a ring.
# Needs torch and transformers (layerfilm[model]): installed here as for `make test`.
demo-model: $(VENV)/.dev
	@mkdir -p films
	$(LF) render sample_checkpoints films/sample-answers.webm --prompt "12 + 45 =" --prompt "3 + 5 =" --prompt "60 + 60 ="
	$(LF) render sample_checkpoints films/sample-rings.webm --points activations \
		--probe sample_checkpoints/probe.txt --probe-positions -1 --prompt "12 + 45 ="
	@echo
	@echo "Films written: $(CURDIR)/films/sample-answers.webm and $(CURDIR)/films/sample-rings.webm"

test: $(VENV)/.dev
	$(PY) -m pytest -q

# The suite with what the package index serves today (pyproject.toml's ranges, no lock) in a
# fresh $(LATEST); golden frames that differ say by how many pixels and how much.  Ends with
# which packages differ from the lock.  Not in CI: its result depends on the day.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet "$(TORCH)"
	$(LATEST)/bin/python -m pip install --quiet --upgrade -e "$(EXTRAS)"
	$(LATEST)/bin/python -m layerfilm.warmup
	$(LATEST)/bin/python -m pytest -q --tb=line -p no:cacheprovider || true
	@$(LATEST)/bin/python scripts/lock.py diff $(LATEST) $(LOCK)

# Write the lock from $(LATEST) (after `make test-latest`); then `make test`, and re-record
# golden frames only after looking at them (docs/internals.md, "Development").
lock:
	$(LATEST)/bin/python scripts/lock.py write $(LATEST) > $(LOCK)

# Benchmarks (prints ratios; see bench/bench.py). BENCH_ARGS=--quick for a small run.
bench: $(VENV)/.dev
	$(PY) bench/bench.py $(BENCH_ARGS)

# Regenerate sample_checkpoints/ (trains the small grokking transformer; a few minutes on CPU).
sample: $(VENV)/.dev
	$(PY) scripts/make_sample.py --out sample_checkpoints

# Render every run folder under runs/ to films/<run>.webm, .gif, stills and stats, incrementally
# (examples/batch.mk; e.g. make batch -j4 RUNS=ckpts).
batch: $(VENV)/.base
	$(MAKE) -f examples/batch.mk LAYERFILM=$(abspath $(LF))

clean:
	rm -rf films .pytest_cache $(LATEST)
