"""The classroom grader on fixture submissions: exact scores, and robust to broken notebooks."""

import csv
import hashlib
from pathlib import Path

import nbformat
import pytest

from lora_course import grading

pytestmark = pytest.mark.slow  # every fixture submission runs in its own kernel

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "03_parameter_arithmetic.ipynb"


def solution_cells():
    notebook = nbformat.read(SOLUTION, 4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return notebook


def exercise_cell(notebook, function_name):
    return next(c for c in notebook.cells if f"def {function_name}(" in c.source)


@pytest.fixture(scope="module")
def submissions(tmp_path_factory, make_exercises):
    folder = tmp_path_factory.mktemp("submissions")

    def save(name, notebook):
        nbformat.write(notebook, folder / name)

    save("ada.ipynb", solution_cells())  # correct

    partly = solution_cells()  # only exercise 03.1 done
    for name in ("lora_parameters_for_config", "trainable_parameters"):
        cell = exercise_cell(partly, name)
        cell.source = make_exercises.strip_solutions(cell.source, name)
    save("ben.ipynb", partly)

    crashing = solution_cells()
    cell = exercise_cell(crashing, "lora_parameters_for_config")
    cell.source = 'raise RuntimeError("boom")\n' + cell.source
    save("cy.ipynb", crashing)

    looping = solution_cells()
    cell = exercise_cell(looping, "trainable_parameters")
    cell.source = "while True:\n    pass\n" + cell.source
    save("dee.ipynb", looping)

    dying = solution_cells()
    dying.cells.insert(2, nbformat.v4.new_code_cell("import os\nos._exit(1)"))
    save("eve.ipynb", dying)

    (folder / "fay.ipynb").write_text('{"cells": [ not json')

    noisy = solution_cells()  # check cells deleted, megabytes printed
    noisy.cells = [c for c in noisy.cells if "check" not in c.metadata.get("tags", [])]
    noisy.cells.append(nbformat.v4.new_code_cell('print("x" * 5_000_000)'))
    (folder / "gus").mkdir()
    nbformat.write(noisy, folder / "gus" / "03_parameter_arithmetic.ipynb")

    unknown = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    save("hal.ipynb", unknown)
    return folder


def digests(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def grades(submissions):
    before = digests(submissions)
    result = {g.student: g for g in grading.grade_folder(submissions, cell_timeout=5)}
    assert digests(submissions) == before, "the grader modified a submission"
    return result


def test_exact_scores(grades):
    scores = {name: (g.total, g.max_points) for name, g in grades.items()}
    assert scores == {
        "ada": (6, 6), "ben": (2, 6), "cy": (4, 6), "dee": (4, 6), "eve": (0, 6), "fay": (0, 0),
        "gus": (6, 6), "hal": (0, 0),
    }  # fmt: skip
    assert grades["ben"].points == {"03.1": 2, "03.2": 0, "03.3": 0}


def test_each_broken_case_is_reported(grades):
    assert grades["ada"].status == "graded" and not grades["ada"].notes
    assert any("RuntimeError" in note for note in grades["cy"].notes)
    assert any("stopped after the time limit" in note for note in grades["dee"].notes)
    assert grades["eve"].status.startswith("kernel died")
    assert grades["fay"].status.startswith("unreadable")
    assert grades["hal"].status.startswith("unknown lesson")
    assert any("NotImplementedError" in note for note in grades["ben"].notes)


def test_csv_and_report(grades, tmp_path):
    path = tmp_path / "grades.csv"
    grading.write_csv(list(grades.values()), path)
    rows = {row["student"]: row for row in csv.DictReader(path.open())}
    assert rows["ada"]["total"] == "6" and rows["ada"]["03.2"] == "2"
    assert rows["fay"]["03.1"] == "" and "unreadable" in rows["fay"]["status"]
    text = grading.report(list(grades.values()))
    assert "kernel died" in text and "ben" in text


def test_every_solution_check_cell_is_known_to_the_grader():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        lesson = path.name[:2]
        known = {visible for _, visible, _ in grading.EXERCISES[lesson]}
        for cell in nbformat.read(path, 4).cells:
            if "check" in cell.metadata.get("tags", []):
                call = cell.source.splitlines()[0].removeprefix("checks.")
                call = call.replace("config)", f"{grading.CONFIG})")
                assert call in known, f"{path.name}: {call} is not graded"
