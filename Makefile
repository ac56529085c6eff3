# layerfilm — the two commands a fresh clone needs:
#   make demo   set up .venv and render sample_checkpoints/ to films/sample.webm and .gif
#   make test   set up .venv (with torch, CPU build) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LF     := $(VENV)/bin/layerfilm
# torch: the CPU build pinned here (an unpinned torch pulls a multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: demo test sample bench clean batch

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	$(PY) -m layerfilm.warmup
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[torch,test,dask]"
	touch $@

demo: $(VENV)/.base
	@mkdir -p films
	$(LF) render sample_checkpoints films/sample.webm
	$(LF) render sample_checkpoints films/sample.gif --size 960x540
	@echo
	@echo "Films written: $(CURDIR)/films/sample.webm and $(CURDIR)/films/sample.gif"

test: $(VENV)/.dev
	$(PY) -m pytest -q

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
	rm -rf films .pytest_cache
