"""Grade a folder of exercise notebooks: sandboxed runs, verdicts in the grader's own process."""

from __future__ import annotations

import csv
import random
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import observations, sandbox

# The checks' own code (drawing cases, judging) runs one thread at a time: it is fast, and lazy
# imports such as transformers' are not thread-safe. Only the sandboxes run in parallel.
_CHECKS = threading.Lock()
ATTEMPTS = 3  # a run that a cell ends or hangs is repeated without that cell, at most this often


@dataclass(frozen=True)
class Options:
    """How to grade: limits, the seed of the instructor-only cases, containment."""

    cell_timeout: int = 60
    memory_bytes: int = 4 * 2**30
    output_bytes: int = 8 * 2**20
    seed: int = 0
    use_sandbox: bool = True


@dataclass
class Grade:
    """One submission's result: points per exercise, and what went wrong."""

    student: str
    file: str
    lesson: str = ""
    status: str = "graded"
    points: dict[str, int] = field(default_factory=dict)
    max_points: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.points.values())


def submissions(folder: Path, shard: tuple[int, int] = (1, 1)) -> list[Path]:
    """The .ipynb files under `folder`, in name order; shard (i, n): every n-th from the i-th."""
    paths = sorted(p for p in Path(folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    index, count = shard
    return paths[index - 1 :: count]


def grade_folder(
    folder: Path, options: Options = Options(), jobs: int = 1, shard=(1, 1), progress=None
) -> list[Grade]:
    """Grade every submission of the shard, `jobs` at a time; the order is the files' order."""
    paths = submissions(folder, shard)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # each job waits on a sandbox
        futures = [pool.submit(_grade_safely, path, Path(folder), options) for path in paths]
        for _ in as_completed(futures):
            if progress is not None:
                progress.update(1)
    return [future.result() for future in futures]


def _grade_safely(path: Path, root: Path, options: Options) -> Grade:
    """grade_file, with any failure of the grader itself reported in the row, not raised."""
    try:
        return grade_file(path, root, options)
    except Exception as error:  # noqa: BLE001 - one odd notebook must not stop a class's grading
        relative = path.relative_to(root)
        grade = Grade(student=relative.parts[0] if len(relative.parts) > 1 else path.stem,
                      file=str(relative))  # fmt: skip
        grade.status = f"grader error ({type(error).__name__}: {str(error)[:150]}): grade by hand"
        return grade


def grade_file(path: Path, root: Path, options: Options = Options()) -> Grade:
    """Run one submission in a sandbox on cases drawn for it, then judge what its objects did."""
    import nbformat

    from lora_course.checks import EXERCISES

    relative = path.relative_to(root)
    student = relative.parts[0] if len(relative.parts) > 1 else path.stem
    grade = Grade(student=student, file=str(relative))
    try:
        notebook = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except Exception as error:  # noqa: BLE001 - anything unreadable is reported, never raised
        grade.status = f"unreadable: not a valid notebook ({type(error).__name__})"
        return grade
    grade.lesson = _lesson(notebook, path)
    if grade.lesson not in EXERCISES:
        grade.status = "unknown lesson: expected an exercises notebook named NN_*.ipynb"
        return grade
    rng = random.Random(f"{options.seed}/{relative.as_posix()}")  # the same in every run
    with _CHECKS:
        cases = {
            f"{exercise.id}/{kind}": (exercise, kind, case)
            for exercise in EXERCISES[grade.lesson]
            for kind, case in exercise.cases(rng).items()
        }
    grade.points = {exercise.id: 0 for exercise in EXERCISES[grade.lesson]}
    grade.max_points = len(cases)
    cells = {  # the student's code cells; their copies of the checks are not run
        str(index): cell.source
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and "check" not in cell.metadata.get("tags", [])
    }
    plan = {
        "lesson": grade.lesson,
        "cells": cells,
        "observe": {key: (exercise.id, case) for key, (exercise, _, case) in cases.items()},
        "cell_timeout": options.cell_timeout,
        "memory_bytes": options.memory_bytes,
        "output_bytes": options.output_bytes,
        # home first: the course may live there and is shown again; then the submissions, hidden
        # even when they sit inside the course folder
        "hidden": [str(Path.home()), str(Path(root).resolve())],
    }
    seen = _run(plan, options, grade)
    if seen is None:
        return grade
    for key, (exercise, kind, case) in cases.items():
        with _CHECKS:
            verdict = _judge(exercise, seen.get(key), case)
        if verdict is None:
            grade.points[exercise.id] += 1
        else:
            grade.notes.append(f"{exercise.id} {kind}: {verdict}")
    return grade


def _lesson(notebook, path: Path) -> str:
    course = notebook.metadata.get("lora_course")
    lesson = course.get("exercises") if isinstance(course, dict) else None
    return lesson if isinstance(lesson, str) else path.name[:2]


def _run(plan: dict, options: Options, grade: Grade) -> dict | None:
    """Run the plan, dropping what ends or hangs the process; the observations, or None."""
    with tempfile.TemporaryDirectory(prefix="lora-grading-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        for _ in range(ATTEMPTS):
            result = sandbox.run(workdir, plan, options.use_sandbox)
            if result.finished:
                break
            if not _drop_culprit(plan, result, grade):
                grade.status = f"could not run: {result.killed or 'the runner failed'}"
                grade.notes.append(f"last output: {result.output_tail}")
                return None
        else:
            grade.status = "could not run: the submission kept ending its own process"
            return None
        grade.notes[:0] = [_cell_note(index, status) for index, status in result.cells.items()
                           if status != "ok"]  # fmt: skip
        try:
            return observations.load(workdir)
        except Exception as error:  # noqa: BLE001 - a submission can break the files: it scores 0
            grade.status = "no observations: the submission broke the runner's files"
            grade.notes.append(f"observations unreadable ({type(error).__name__}: {error})"[:200])
            return None


def _drop_culprit(plan: dict, result: sandbox.RunResult, grade: Grade) -> bool:
    """Remove the cell or observation the run stopped in; False if there is none to blame."""
    stopped = result.stopped_at or {}
    why = result.killed or "ended the Python process"
    if str(stopped.get("cell")) in plan["cells"]:
        del plan["cells"][str(stopped["cell"])]
        grade.notes.append(f"cell {stopped['cell']}: {why}; run again without it")
        return True
    if stopped.get("observe") in plan["observe"]:
        key = stopped["observe"]
        del plan["observe"][key]
        grade.notes.append(f"{key}: calling the submission's code {why}")
        return True
    return False


def _cell_note(index: int, status: str) -> str:
    if status == "timeout":
        return f"cell {index}: stopped after the time limit"
    return f"cell {index}: {status}"


def _judge(exercise, seen, case) -> str | None:
    """None if the observations pass the exercise's judge, else why not."""
    if seen is None:
        return "not observed (see the notes above)"
    if not isinstance(seen, dict):
        return "malformed observations"
    if "missing" in seen:
        return f"no `{exercise.target}` defined"
    if "timeout" in seen:
        return f"calling `{exercise.target}` ran past {seen['timeout']} s"
    if "crashed" in seen:
        return f"calling `{exercise.target}` crashed: {seen['crashed']}"
    try:
        exercise.judge(seen, case)
    except AssertionError as error:
        return str(error)[:300]
    except Exception as error:  # noqa: BLE001 - observations a real run cannot produce
        return f"malformed observations ({type(error).__name__}: {str(error)[:120]})"
    return None


def write_csv(grades: list[Grade], path: Path) -> None:
    """One row per submission: points per exercise, total, maximum, status and notes."""
    exercises = sorted({exercise for grade in grades for exercise in grade.points})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["student", "file", "lesson", *exercises, "total", "max", "status", "notes"]
        )
        for g in grades:
            points = [g.points.get(exercise, "") for exercise in exercises]
            row = [g.student, g.file, g.lesson, *points, g.total, g.max_points, g.status]
            writer.writerow([*row, " | ".join(g.notes)])


def merge_csv(paths: list[Path], out: Path) -> int:
    """Combine shard CSVs into one, rows in file order; refuse a file graded twice."""
    rows, columns = {}, []
    for path in paths:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["file"] in rows:
                    raise ValueError(f"{row['file']} is in more than one shard")
                rows[row["file"]] = row
                columns += [c for c in row if c not in columns]
    fixed = ["student", "file", "lesson", "total", "max", "status", "notes"]
    exercises = sorted(c for c in columns if c not in fixed)
    header = ["student", "file", "lesson", *exercises, "total", "max", "status", "notes"]
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(rows[name] for name in sorted(rows))
    return len(rows)


def report(grades: list[Grade]) -> str:
    """A short text summary, one line per submission and one per problem."""
    lines = []
    for g in grades:
        lines.append(f"{g.student:<16} {g.file:<44} {g.total:>2}/{g.max_points:<2} {g.status}")
        lines += [f"    {note[:160]}" for note in g.notes]
    return "\n".join(lines)
