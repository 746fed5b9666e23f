#!/usr/bin/env bash
# Every check of the course, in order, each part timed: set-up, lint, model weights, unit tests,
# notebooks (nbval). `make test` runs this script; notebooks/README.md sets each part's budget.
set -uo pipefail

venv=${VENV:-.venv}
export PATH="$PWD/$venv/bin:$PATH"
# Re-executed notebooks use the small CI workloads and the packaged weights (never a hub cache),
# so that their outputs compare with the committed ones on every machine (tools/course_env.sh).
source tools/course_env.sh
export LORA_COURSE_FAST=1
# A cache made fresh for every run: the GGUF is converted once (the "model weights" part) and the
# notebooks' adapters are trained within the run, so no run depends on what an earlier one left.
export LORA_COURSE_CACHE="$PWD/build/test-cache"
rm -rf "$LORA_COURSE_CACHE"
notebook_dirs=(notebooks solutions)  # exercises/ are checked by tests/test_exercises.py
jobs=${TEST_JOBS:-$(nproc)}

names=() times=() results=()
run_part() {
  local name=$1
  shift
  echo
  echo "==== $name: $*"
  local start=$SECONDS
  "$@"
  local rc=$?
  names+=("$name") times+=($((SECONDS - start))) results+=("$([ $rc -eq 0 ] && echo ok || echo FAILED)")
}

run_part "environment" make --no-print-directory env VENV="$venv"
if [ "${results[0]}" != ok ]; then
  echo "setting up $venv failed; nothing else can run" >&2
  exit 1
fi
run_part "lint" ruff check lora_course tests tools benchmarks exercises "${notebook_dirs[@]}"
run_part "format" ruff format --check lora_course tests tools benchmarks exercises "${notebook_dirs[@]}"
run_part "exercises generated" python tools/make_exercises.py --check
run_part "colab cells" python tools/colab_cells.py --check
# The GGUF -> safetensors conversion, once per run, into the fresh cache: tests and notebooks reuse it.
run_part "model weights" python -m lora_course.models
# Unit tests use every core (pytest-xdist; a test module stays on one worker). Notebooks too, one
# kernel per core with one torch thread each (a notebook stays on one worker): on 2 cores that
# measured 583 s against 625 s one notebook at a time, while two kernels that each ran torch on
# both cores slowed each other down more than 10x (threads competing for cores).
run_part "unit tests" python -m pytest tests -p no:cacheprovider -n "$jobs" --dist loadscope \
  --durations=10
run_part "notebooks (nbval)" env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
  python -m pytest -p no:cacheprovider --nbval --nbval-current-env \
  --nbval-sanitize-with .ci/nbval_sanitize.cfg --nbval-cell-timeout=900 --durations=10 \
  -n "$jobs" --dist loadfile "${notebook_dirs[@]}"

echo
echo "==== timings"
failed=0
for i in "${!names[@]}"; do
  printf '%-20s %6ss  %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
  [ "${results[$i]}" = ok ] || failed=1
done
printf '%-20s %6ss\n' "total" "$SECONDS"
exit $failed
