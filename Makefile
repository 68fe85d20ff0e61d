# `make test` and `make app` set everything up on a fresh machine: a .venv with the pinned requirements and
# the project installed editable (`tslab` in .venv/bin).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint bench clean app browser

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

test: lint browser
	$(PY) -m pytest -q

# The app's end-to-end test and PNG export drive Debian's Chromium (never `playwright install`):
# installed with apt when missing (the CI runs as root; elsewhere through sudo when it needs no password).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update && sudo apt-get install -y chromium; \
	  else echo "no $(CHROMIUM): install it (apt-get install chromium) for the browser test and PNG export"; fi; }

# The app on the shipped models: http://localhost:8501 (APP_FLAGS="--server.port 8600" etc.)
APP_FLAGS ?=
app: setup browser
	$(VENV)/bin/streamlit run app/main.py $(APP_FLAGS)

bench: setup
	$(PY) bench/forward.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
