# LoRA from the ground up: `make course` runs the course, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lora-course-installed
COURSE_OUT ?= build/course
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

.PHONY: help env course test notebooks bench clean

help:
	@echo "make course     run every notebook top to bottom (full mode) into $(COURSE_OUT)/"
	@echo "make test       lint + unit tests + re-execute every notebook with nbval (fast mode)"
	@echo "make notebooks  re-execute the notebooks in place, to commit their outputs"
	@echo "make bench      benchmark scripts (ratios measured side by side)"
	@echo "make env        only create $(VENV) and install the course into it"

env: $(STAMP)

$(STAMP): pyproject.toml tools/setup_env.sh
	bash tools/setup_env.sh $(VENV)
	@touch $@

course: env
	$(PY) tools/execute_notebooks.py --output-dir $(COURSE_OUT) $(NOTEBOOKS)

test:  # sets up $(VENV) itself, as its first timed part
	@VENV=$(VENV) bash tools/run_tests.sh

notebooks: env
	$(PY) tools/execute_notebooks.py --inplace $(NOTEBOOKS)

bench: env
	$(PY) benchmarks/bench_lora_layer.py

clean:
	rm -rf build .pytest_cache .ruff_cache
