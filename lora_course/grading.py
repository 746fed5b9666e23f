"""The classroom grader: score a folder of submitted exercise notebooks (README, "For instructors").

python -m lora_course.grading SUBMISSIONS/ --out grades.csv [--cell-timeout 60]

Each submission runs in a fresh kernel, in a temporary folder, from an in-memory copy: the file
itself is never modified. Cells may fail or time out (a timed-out cell is interrupted) and the
run goes on. Then the grader runs its own checks in that kernel: the visible check of every
exercise (1 point) and an instructor-only variant on other sizes and seeds (1 point), so a
deleted or edited check cell changes nothing. A notebook that is not valid JSON, kills its
kernel or names no known lesson gets a row that says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "LORA_COURSE_GRADE "
CONFIG = "__grading_config"  # SmolLM2's config, defined by the grader, not the student

# lesson: [(exercise, visible check, instructor-only check or None)]
EXERCISES: dict[str, list[tuple[str, str, str | None]]] = {
    "01": [
        ("01.1", "check_energy_captured(energy_captured)", "hidden=True"),
        ("01.2", "check_low_rank_approximation(low_rank_approximation)", "hidden=True"),
        ("01.3", "check_rank_for_energy(rank_for_energy)", "hidden=True"),
    ],
    "02": [
        ("02.1", "check_lora_init(MyLoRALinear)", "hidden=True"),
        ("02.2", "check_lora_forward(MyLoRALinear)", "hidden=True"),
        ("02.3", "check_merge(MyLoRALinear)", "hidden=True"),
        ("02.4", "check_unmerge(MyLoRALinear)", "hidden=True"),
    ],
    "03": [
        ("03.1", "check_lora_pair_parameters(lora_pair_parameters)", "hidden=True"),
        (
            "03.2",
            f"check_lora_parameters_for_config(lora_parameters_for_config, {CONFIG})",
            "hidden=True",
        ),  # fmt: skip
        ("03.3", "check_trainable_parameters(trainable_parameters)", "hidden=True"),
    ],
    "04": [
        ("04.1", "check_scaling(scaling)", "hidden=True"),
        ("04.2", "check_alpha_predictions(*predictions())", None),
        ("04.3", "check_rslora_ratio(rslora_ratio)", "hidden=True"),
    ],
    "05": [
        ("05.1", "check_answer_only_labels(answer_only_labels)", "hidden=True"),
        ("05.2", "check_exact_match(exact_match)", "hidden=True"),
        ("05.3", "check_pick_precision(pick_precision)", "hidden=True"),
    ],
    "06": [
        ("06.1", f"check_rank_for_budget(rank_for_budget, {CONFIG})", "hidden=True"),
        ("06.2", f"check_plan_adapter(plan_adapter, {CONFIG})", "hidden=True"),
        ("06.3", f"check_mlp_share(mlp_share, {CONFIG})", "hidden=True"),
    ],
    "07": [
        ("07.1", "check_merged_weight(merged_weight)", "hidden=True"),
        ("07.2", "check_adapter_shapes_fit(adapter_shapes_fit)", "hidden=True"),
        ("07.3", "check_changed_parameters(changed_parameters)", "hidden=True"),
    ],
}

PRELUDE = f"""
import json as __grading_json
import lora_course.checks as __grading_checks
from lora_course.architectures import build_config as __grading_build_config

{CONFIG} = __grading_build_config("SmolLM2-135M")


def __grade(exercise, kind, check):
    try:
        check()
        result = {{"ok": True, "message": ""}}
    except BaseException as error:  # a KeyboardInterrupt is a timed-out check
        name = "timed out" if isinstance(error, KeyboardInterrupt) else type(error).__name__
        result = {{"ok": False, "message": f"{{name}}: {{str(error)[:300]}}"}}
    result.update(exercise=exercise, kind=kind)
    print("{MARKER}" + __grading_json.dumps(result))
"""


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


def grade_folder(folder: Path, cell_timeout: int = 60) -> list[Grade]:
    """Grade every .ipynb under `folder` (recursively), in name order."""
    paths = sorted(p for p in Path(folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    return [grade_file(path, Path(folder), cell_timeout) for path in paths]


def grade_file(path: Path, root: Path, cell_timeout: int = 60) -> Grade:
    """Execute one submission with the grader's checks appended, and score it."""
    import nbformat

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
    exercises = EXERCISES[grade.lesson]
    grade.max_points = sum(1 + (hidden is not None) for _, _, hidden in exercises)
    grade.points = {exercise: 0 for exercise, _, _ in exercises}
    first_grading_cell = _append_grading_cells(notebook, exercises)
    error = _execute(notebook, cell_timeout)
    grade.notes += _cell_problems(notebook.cells[:first_grading_cell])
    if error:
        grade.status = error
        return grade
    for result in _results(notebook.cells[first_grading_cell:]):
        if result["ok"]:
            grade.points[result["exercise"]] += 1
        else:
            grade.notes.append(f"{result['exercise']} {result['kind']}: {result['message']}")
    return grade


def _lesson(notebook, path: Path) -> str:
    lesson = notebook.metadata.get("lora_course", {}).get("exercises")
    return lesson or path.name[:2]


def _append_grading_cells(notebook, exercises) -> int:
    """Drop the student's check cells (the grader runs its own) and append the grader's."""
    import nbformat

    notebook.cells = [c for c in notebook.cells if "check" not in c.metadata.get("tags", [])]
    first = len(notebook.cells)
    notebook.cells.append(nbformat.v4.new_code_cell(PRELUDE))
    for exercise, visible, hidden in exercises:
        call = f"__grading_checks.{visible}"
        cell = f'__grade("{exercise}", "visible", lambda: {call})'
        notebook.cells.append(nbformat.v4.new_code_cell(cell))
        if hidden is not None:
            call = call[:-1] + f", {hidden})"
            cell = f'__grade("{exercise}", "instructor", lambda: {call})'
            notebook.cells.append(nbformat.v4.new_code_cell(cell))
    return first


def _execute(notebook, cell_timeout: int) -> str | None:
    """Run the notebook; None if the kernel survived, else what happened."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    from .kernel import ThisPythonKernelManager

    with tempfile.TemporaryDirectory(prefix="lora-grading-") as workdir:
        client = NotebookClient(
            notebook,
            kernel_manager_class=ThisPythonKernelManager,
            timeout=cell_timeout,
            interrupt_on_timeout=True,  # stop a looping cell and go on with the next
            allow_errors=True,
            record_timing=False,
            resources={"metadata": {"path": workdir}},
        )
        try:
            client.execute()
        except DeadKernelError:
            return "kernel died (the notebook crashed its Python process); nothing graded"
        except Exception as error:  # noqa: BLE001 - report, never crash the whole run
            return f"could not run: {type(error).__name__}: {str(error)[:200]}"
    return None


def _cell_problems(cells) -> list[str]:
    """One note per student cell that raised or was stopped for running too long."""
    notes = []
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                stopped = output.get("ename") == "KeyboardInterrupt"
                what = "stopped after the time limit" if stopped else output.get("ename")
                notes.append(f"cell {index}: {what}")
    return notes


def _results(cells) -> list[dict]:
    """The grader's verdicts: the last marker line printed by each grading cell."""
    results = []
    for cell in cells:
        lines = [
            line
            for output in cell.get("outputs", [])
            if output.get("output_type") == "stream"
            for line in output.get("text", "").splitlines()
            if line.startswith(MARKER)
        ]
        if lines:
            results.append(json.loads(lines[-1][len(MARKER) :]))
    return results


def write_csv(grades: list[Grade], path: Path) -> None:
    """One row per submission: points per exercise, total, maximum, status and notes."""
    exercises = sorted({exercise for grade in grades for exercise in grade.points})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["student", "file", "lesson", *exercises, "total", "max", "status", "notes"]
        writer.writerow(header)
        for g in grades:
            points = [g.points.get(exercise, "") for exercise in exercises]
            row = [g.student, g.file, g.lesson, *points, g.total, g.max_points, g.status]
            writer.writerow([*row, " | ".join(g.notes)])


def report(grades: list[Grade]) -> str:
    """A short text summary, one line per submission and one per problem."""
    lines = []
    for g in grades:
        lines.append(f"{g.student:<16} {g.file:<44} {g.total:>2}/{g.max_points:<2} {g.status}")
        lines += [f"    {note[:160]}" for note in g.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade a folder of exercise notebooks.")
    parser.add_argument("submissions", type=Path, help="folder of submitted .ipynb files")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write")
    parser.add_argument("--cell-timeout", type=int, default=60, help="seconds per cell")
    args = parser.parse_args(argv)
    if not args.submissions.is_dir():
        parser.error(f"{args.submissions} is not a folder")
    grades = grade_folder(args.submissions, args.cell_timeout)
    write_csv(grades, args.out)
    text = report(grades)
    args.out.with_suffix(".txt").write_text(text + "\n")
    print(text)
    print(f"\n{len(grades)} submissions graded: {args.out} and {args.out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
