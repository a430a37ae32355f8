# mamlpp: every entry point a researcher needs. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SCALE  ?= smoke
JOBS   ?= auto
SEEDS  ?= 0 1 2
ROWS   ?=
SET    ?=
FIDELITY ?= paper
TIME_LIMIT ?=
REPORTS ?= reports
RUNS   ?= runs
export MAMLPP_DATA ?= $(CURDIR)/data

.PHONY: help setup demo test browser check lint typecheck bench table1 table2 figure2 report screenshot clean

help:
	@echo "make demo    set up .venv, train MAML++ on Omniglot 5-way 1-shot (smoke scale), test, report"
	@echo "make test    run the test suite"
	@echo "make check   ruff + mypy"
	@echo "make bench   engine speed benchmark (seconds per outer iteration)"
	@echo "make table1|table2|figure2 SCALE=smoke|paper JOBS=N|auto [SEEDS='0 1 2'] [ROWS=preset...] [SET=key=value...] [FIDELITY=paper|reference-code] [TIME_LIMIT=minutes]"
	@echo "            train the missing runs of a paper experiment (JOBS=auto: one per GPU), then its report"
	@echo "make report  rebuild reports/ from the run directories"
	@echo "make screenshot  docs/report-index.png from the demo's report (example runs when there is no demo)"

# A virtual environment of our own; reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The README's main job. Omniglot comes from $(MAMLPP_DATA)/omniglot, downloaded there (official
# zips, md5-checked) when missing; MAMLPP_DATA=/path/to/data uses a local copy instead.
demo: setup
	@$(BIN)/mamlpp data check omniglot >/dev/null 2>&1 || $(BIN)/mamlpp data prepare omniglot --download
	$(BIN)/mamlpp train --preset omniglot_5way_1shot_mamlpp --scale smoke --seed 0 --runs-dir $(RUNS)/demo
	$(BIN)/mamlpp report --runs-dir $(RUNS)/demo --out $(REPORTS)/demo
	@echo "run directory: $(RUNS)/demo/   report: $(REPORTS)/demo/index.html"

test: setup browser
	$(BIN)/python -m pytest -q

# Headless Chromium for the report-page test (tests/test_analysis_report.py): installs Debian's
# chromium when none is on PATH and apt-get is usable (root); never fails the build. Without a
# Chromium the browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	command -v google-chrome >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "browser: installing Debian's chromium with apt-get (for the report-page test)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null 2>&1 || \
	    { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null 2>&1; } || \
	    echo "browser: could not install chromium with apt-get; the browser test will skip"; \
	  else echo "browser: no chromium and no root apt-get; the browser test will skip"; fi; }

lint: setup
	$(BIN)/ruff check mamlpp tests benchmarks

typecheck: setup
	$(BIN)/mypy mamlpp

check: lint typecheck

bench: setup
	$(BIN)/mamlpp bench

table1 table2 figure2: setup
	$(BIN)/mamlpp sweep run $@ --scale $(SCALE) --jobs $(JOBS) --runs-dir $(RUNS)/$(SCALE) \
		$(foreach s,$(SEEDS),--seed $(s)) $(foreach r,$(ROWS),--preset $(r)) $(foreach o,$(SET),--set $(o)) \
		$(if $(filter-out paper,$(FIDELITY)),--set fidelity=$(FIDELITY)) \
		$(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT))
	$(BIN)/mamlpp report --runs-dir $(RUNS)/$(SCALE) --out $(REPORTS)/$(SCALE)

report: setup
	$(BIN)/mamlpp report --runs-dir $(RUNS)/$(SCALE) --out $(REPORTS)/$(SCALE)

# docs/report-index.png: the top of the report index of SHOT_RUNS (the demo's runs; hand-made
# example runs when those are missing) in headless Chromium.
SHOT_RUNS ?= $(RUNS)/demo
screenshot: setup browser
	@runs=$(SHOT_RUNS); if [ ! -d "$$runs" ]; then runs=$(RUNS)/example; \
	  $(BIN)/python -m tests.support.example_runs $$runs; fi; \
	$(BIN)/mamlpp report --runs-dir $$runs --out $(REPORTS)/screenshot && \
	$(BIN)/python -m tests.support.browser_support $(REPORTS)/screenshot/index.html docs/report-index.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
