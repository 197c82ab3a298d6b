# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo.py --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

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
	$(BENCH_RUN) benchmarks/bench_grad_compile.py
	$(BENCH_RUN) benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) out .pytest_cache
