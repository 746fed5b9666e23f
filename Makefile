# LoRA from the ground up: `make course` runs the course, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lora-course-installed
COURSE_OUT ?= build/course
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

.PHONY: help env course site test notebooks exercises grade bench lock warm clean

help:
	@echo "make course     run every notebook top to bottom (full mode) into $(COURSE_OUT)/,"
	@echo "                then render them as a static site in build/site/"
	@echo "make site       render the committed notebooks as the site, without running them"
	@echo "make test       lint + unit tests + re-execute every notebook with nbval (fast mode)"
	@echo "make notebooks  re-execute the notebooks in place, to commit their outputs"
	@echo "make exercises  regenerate exercises/ from solutions/ (after editing a solution)"
	@echo "make grade SUBMISSIONS=folder   grade students' exercise notebooks into grades.csv"
	@echo "make bench      benchmark scripts (ratios measured side by side)"
	@echo "make env        only create $(VENV) and install the course into it"
	@echo "make warm       before a class: convert the weights, train notebook 07's adapters once"
	@echo "make lock       rewrite constraints.txt from $(VENV) (after changing a dependency)"

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt tools/setup_env.sh
	bash tools/setup_env.sh $(VENV)
	@touch $@

course: env
	$(PY) tools/execute_notebooks.py --output-dir $(COURSE_OUT) $(NOTEBOOKS)
	$(PY) tools/build_site.py --notebooks $(COURSE_OUT) --out build/site

warm: env  # docs/workshop.md: run before a class (on 2 CPU cores two trainings of about 4 min)
	$(PY) -m lora_course.finetune --warm

site: env  # the committed notebooks, rendered
	$(PY) tools/build_site.py --out build/site

test:  # sets up $(VENV) itself, as its first timed part
	@VENV=$(VENV) bash tools/run_tests.sh

notebooks: env  # full mode, packaged weights: what the committed outputs come from
	source tools/course_env.sh && LORA_COURSE_FAST=0 $(PY) tools/execute_notebooks.py --inplace $(NOTEBOOKS)

exercises: env
	source tools/course_env.sh && $(PY) tools/execute_notebooks.py --inplace $(sort $(wildcard solutions/*.ipynb))
	$(PY) tools/make_exercises.py

SUBMISSIONS ?= submissions
grade: env
	$(PY) -m lora_course.grading $(SUBMISSIONS) --out grades.csv

lock: env  # after changing a dependency: record the versions that now produce the outputs
	{ echo "# Exact versions behind the committed notebook outputs; tools/setup_env.sh installs with"; \
	  echo "# them. torch is chosen per machine (see README). Regenerate with \`make lock\`."; \
	  $(PY) -m pip freeze --exclude-editable --disable-pip-version-check | \
	  grep -viE '^(torch|triton|nvidia-[a-z0-9-]+|lora-course)=='; } > constraints.txt

bench: env
	$(PY) benchmarks/bench_lora_layer.py
	source tools/course_env.sh && $(PY) benchmarks/bench_training_step.py

clean:
	rm -rf build .pytest_cache .ruff_cache
