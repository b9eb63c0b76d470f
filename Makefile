# `make test` is the README's test command and what CI runs (.ci/run).
PYTHON ?= python3

.PHONY: test install
install:
	$(PYTHON) -m pip install -q -e ".[test]"

test: install
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: Debian chromium could not be installed; the browser test will be skipped"
	$(PYTHON) -m pytest -q --durations=15
