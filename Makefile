# One venv for everything; `make test` is the README's test command and what CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install app docs test test-all test-gpu lint format bench browser mutants
PORT ?= 8501

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The README's app command: the concept explorer on the bundled checkpoint (.streamlit/config.toml)
app: install
	$(VENV)/bin/streamlit run app/serve.py --server.port $(PORT)

lint: install
	$(VENV)/bin/ruff check mcssl app tests benchmarks
	$(VENV)/bin/ruff format --check mcssl app tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix mcssl app tests benchmarks
	$(VENV)/bin/ruff format mcssl app tests benchmarks

# regenerate the generated docs (a test checks they are current)
docs: install
	$(PY) -c "from mcssl.cli import reference; print(reference(), end='')" > docs/CLI.md

# Debian chromium for the real-browser test (apt-get, as root or with sudo) when missing
browser:
	bash scripts/install_browser.sh

test: lint browser
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: lint browser
	$(PY) -m pytest -m "not gpu" -q

# plants each bug of tests/mutants.yaml in a temporary copy and runs the tests that must catch it
# (MUTANTS_ARGS=--no-baseline when the suite has just passed, as in .ci/run)
mutants: install
	$(PY) tests/mutants.py $(MUTANTS_ARGS)

test-gpu: install
	$(PY) -m pytest -m gpu -q

bench: install
	$(PY) benchmarks/train_throughput.py
