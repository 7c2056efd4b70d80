# The two commands of the README: `make demo` and `make test`. Both install what they need first.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: install install-test install-bench demo lint test test-slow test-all vendor-charts

install:
	bash scripts/install.sh

install-test:
	bash scripts/install.sh test

# Benchmarks need the baselines (chonkie, LangChain splitters, llmlingua): then run benchmarks/<name>.py.
install-bench:
	bash scripts/install.sh bench

demo: install
	$(VENV)/bin/ragpress demo

# ruff (pyflakes, isort, bugbear, pyupgrade, public docstrings) and mypy, configured in pyproject.toml.
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The checks, then everything not marked slow (< 10 minutes on 2 cores).
test: lint
	$(PYTEST) -m "not slow"

test-slow: install-test
	$(PYTEST) -m slow || [ $$? -eq 5 ]  # 5: no test selected

test-all: install-test
	$(PYTEST)

# Re-vendor the dashboard's chart library (pinned Chart.js via npm) and record its sha256.
vendor-charts:
	bash scripts/vendor_chartjs.sh
