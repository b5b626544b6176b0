# Every target sets up .venv by itself (once; again only when the pins change).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samkit-installed
PIP := PIP_CONSTRAINT=$(CURDIR)/constraints.txt PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -q
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: lab test figures bench venv clean-outputs browser

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (first time: a few minutes; torch comes from this machine's pip cache or PyPI)"
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -r requirements.lock
	# sam2 ships only as source; its CUDA extension is optional (post-processing only).
	SAM2_BUILD_CUDA=0 $(PIP) --no-build-isolation --no-deps sam2==1.1.0
	$(PIP) --no-build-isolation --no-deps -e .
	@touch $@

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

# Unit tests (the browser test of the prompt probe included), then every notebook in the `smoke`
# profile (nbval: the asserts in the cells are the checks).
test: $(STAMP) browser
	SAMKIT_PROFILE=smoke $(PY) -m pytest tests $(NOTEBOOKS) --nbval-lax --nbval-current-env -p no:cacheprovider

# Debian's chromium for the prompt probe's browser test and latency benchmark (playwright drives it;
# it downloads no browser).
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
	  else echo "the browser test needs /usr/bin/chromium: apt-get install chromium"; exit 1; fi; }

# Every notebook in the `class` profile, headless; they write figures/<stem>*.png and figures/<stem>.json.
figures: $(STAMP)
	@mkdir -p build/executed
	for notebook in $(NOTEBOOKS); do \
	  SAMKIT_PROFILE=class $(VENV)/bin/jupyter nbconvert --to notebook --execute \
	    --ExecutePreprocessor.timeout=1800 --output-dir build/executed "$$notebook" || exit 1; \
	done

# tools/ is not installed with samkit: `-m tools.bench` finds it from the repository root.
bench: $(STAMP) browser
	$(PY) -m tools.bench

# Strip outputs from the notebooks before committing them.
clean-outputs: $(STAMP)
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace $(NOTEBOOKS)
