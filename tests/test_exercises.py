"""Exercises are generated from solutions, and every untouched exercise fails every check."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


def test_there_is_one_exercise_notebook_per_lesson_with_three_to_six_checks():
    notebooks = (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
    lessons = sorted(p.name for p in notebooks if p.name[:2] != "00")  # 00 sets up, no exercises
    assert [p.name for p in EXERCISES] == lessons
    for path in EXERCISES:
        checks = [c for c in nbformat.read(path, 4).cells if "check" in c.metadata.get("tags", [])]
        assert 3 <= len(checks) <= 6, path.name


def test_exercises_are_what_the_solutions_generate():
    result = subprocess.run(
        [sys.executable, "tools/make_exercises.py", "--check"], cwd=ROOT, capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_solution_regions_become_stubs_with_their_hint(make_exercises):
    source = "def f(x):\n    ### BEGIN SOLUTION: square it\n    return x * x\n    ### END SOLUTION"
    stub = make_exercises.strip_solutions(source, "test")
    assert stub == 'def f(x):\n    raise NotImplementedError("square it")'
    with pytest.raises(ValueError, match="never closed"):
        make_exercises.strip_solutions("### BEGIN SOLUTION\nx = 1", "test")
    with pytest.raises(ValueError, match="without BEGIN"):
        make_exercises.strip_solutions("x = 1\n### END SOLUTION", "test")


def test_generated_notebooks_say_so_and_carry_no_outputs():
    for path in EXERCISES:
        notebook = nbformat.read(path, 4)
        assert "do not edit" in notebook.cells[1].source
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")
        assert "### BEGIN SOLUTION" not in nbformat.writes(notebook)


@pytest.mark.slow  # the grader runs every notebook in its own process
def test_the_grader_gives_untouched_exercises_nothing_and_solutions_everything(tmp_path):
    from lora_course import grading
    from lora_course.grading.sandbox import sandbox_problem

    for folder in ("exercises", "solutions"):
        (tmp_path / folder).mkdir()
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            (tmp_path / folder / path.name).write_bytes(path.read_bytes())
    options = grading.Options(seed=5, use_sandbox=sandbox_problem() is None)
    grades = grading.grade_folder(tmp_path, options, jobs=2)
    assert len(grades) == 2 * len(EXERCISES)
    for grade in grades:
        assert grade.status == "graded", (grade.file, grade.status)
        if grade.student == "solutions":
            assert grade.total == grade.max_points > 0, (grade.file, grade.notes)
        else:
            assert grade.total == 0 and len(grade.notes) == grade.max_points, grade.file
            wrong = [note for note in grade.notes if "not written yet" not in note]
            assert not wrong, wrong
