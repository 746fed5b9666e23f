"""Runs one submission inside the grader's sandbox: `python -m lora_course.grading.runner DIR`.

DIR holds plan.json, written by the grader: the submission's code cells, the exercises to observe
and their cases, the limits. The runner reads and deletes it, then executes the cells one by one in
an IPython shell (magics work, an error or a timed-out cell does not stop the run), recording each
cell's start in progress.json and its outcome in cells.jsonl. Then it calls the submission's
objects on the grader's cases and writes the observations (observations.py). It judges nothing:
the grader does, in its own process, from those files.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path


class CellTimeout(KeyboardInterrupt):
    """A cell or an observation ran past its time limit (a KeyboardInterrupt, as in Jupyter)."""


def _on_alarm(signum, frame):
    raise CellTimeout()


def _limit(memory_bytes: int, output_bytes: int) -> None:
    """Cap this process and its children: address space, size of any file written (stdout too)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails (OSError), no kill


def _timed(seconds: float, call, *args):
    """call(*args), interrupted by CellTimeout after `seconds`."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return call(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run(workdir: Path) -> None:
    plan_path = workdir / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan_path.unlink()  # the cases are the grader's; the submission's code runs after this
    _limit(plan["memory_bytes"], plan["output_bytes"])

    import torch  # noqa: F401 - before the submission's code, like the checks themselves
    from IPython.core.interactiveshell import InteractiveShell

    from lora_course.checks import EXERCISES
    from lora_course.grading.observations import save

    exercises = {exercise.id: exercise for exercise in EXERCISES[plan["lesson"]]}
    shell = InteractiveShell.instance()
    progress, outcomes = workdir / "progress.json", open(workdir / "cells.jsonl", "a")
    for index, source in plan["cells"].items():
        progress.write_text(json.dumps({"cell": int(index), "started": time.time()}))
        try:
            result = _timed(plan["cell_timeout"], shell.run_cell, source)
            error = result.error_in_exec or result.error_before_exec
            status = "ok" if error is None else type(error).__name__
            status = "timeout" if isinstance(error, CellTimeout) else status
        except CellTimeout:
            status = "timeout"
        except BaseException as error:  # noqa: BLE001 - the run goes on, like a notebook's
            status = type(error).__name__
        outcomes.write(json.dumps({"cell": int(index), "status": status}) + "\n")
        outcomes.flush()

    observations = {}
    for key, (exercise_id, case) in plan["observe"].items():
        progress.write_text(json.dumps({"observe": key, "started": time.time()}))
        exercise = exercises[exercise_id]
        obj = shell.user_ns.get(exercise.target)
        if obj is None:
            observations[key] = {"missing": exercise.target}
            continue
        try:
            observations[key] = _timed(plan["cell_timeout"], exercise.observe, obj, case)
        except CellTimeout:
            observations[key] = {"timeout": plan["cell_timeout"]}
        except BaseException as error:  # noqa: BLE001 - observe never raises, the code it ran may
            observations[key] = {"crashed": f"{type(error).__name__}: {error}"[:300]}
    save(workdir, observations)
    (workdir / "done").write_text("")
    os._exit(0)  # no flush (a capped stdout cannot take more), no atexit hooks of the submission's


if __name__ == "__main__":
    run(Path(sys.argv[1]))
