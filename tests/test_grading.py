"""The classroom grader on hostile submissions: each earns what its real code earns, nothing more.

Every fixture below is a lesson-01 notebook, either the worked solution (6 points: 3 exercises x
visible case and instructor variant) or the untouched exercise (0 points), plus one trick. The
verdicts are computed in the grader's process, so no trick inside the submission can change them;
the sandbox keeps what the submission does inside its own folder and process tree.
"""

import csv
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from lora_course import grading
from lora_course.checks import EXERCISES
from lora_course.grading import sandbox

pytestmark = pytest.mark.slow  # every fixture submission runs in its own sandbox

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_rank_and_svd_energy.ipynb"
EXERCISE = ROOT / "exercises" / "01_rank_and_svd_energy.ipynb"
MARK = "lora-grading-test-background-process"
OUTSIDE = Path.home() / "lora-grading-test-written-outside.txt"

PATCH_CHECKS = """
import lora_course.checks as checks
from lora_course.checks import exercise
for name in dir(checks):
    if name.startswith("check_"):
        setattr(checks, name, lambda *a, **k: None)
exercise.Exercise.check = lambda *a, **k: None
exercise.require = lambda *a, **k: None
"""
PATCH_LIBRARIES = """
import builtins, json, sys, io, torch
_dumps = json.dumps
json.dumps = lambda obj, *a, **k: _dumps({**obj, "ok": True} if isinstance(obj, dict) else obj)
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
builtins.print = lambda *a, **k: None
sys.stdout = io.StringIO()
"""
FAKE_VERDICTS = """
for exercise in ("01.1", "01.2", "01.3"):
    for kind in ("visible", "instructor"):
        print('LORA_COURSE_GRADE {"ok": true, "exercise": "%s", "kind": "%s"}' % (exercise, kind))
"""
STUBBORN_LOOP = """
import time
while True:
    try:
        time.sleep(0.05)
    except BaseException:
        pass
"""
# RLIMIT_AS caps address space, so untouched 1 GiB blocks meet the limit as touched ones would, at
# once: a bytearray loop spends most of its time filling pages and can outlast the 2 s cell limit
# on a loaded machine (it did in CI), which would test the clock, not the memory cap.
MEMORY_HOG = "import numpy\nhog = []\nwhile True:\n    hog.append(numpy.empty(2**27))  # 1 GiB each"
BACKGROUND = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # {MARK}"],
                 start_new_session=True)
"""


def notebook(source: Path, extra: str | None = None, at: int | None = None):
    nb = nbformat.read(source, 4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    if extra is not None:
        cell = nbformat.v4.new_code_cell(extra)
        nb.cells.insert(len(nb.cells) if at is None else at, cell)
    return nb


def digests(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# name: (notebook, points it must get, a note it must carry)
def fixtures(folder: Path):
    reader = f'print(open("{folder / "ada.ipynb"}").read()[:100])'
    writer = f'open("{OUTSIDE}", "w").write("x")\nopen("{ROOT / "escaped.txt"}", "w").write("x")'
    edited = notebook(SOLUTION)
    for cell in edited.cells:
        if "check" in cell.metadata.get("tags", []):
            cell.source = "print('passed')"
    deleted = notebook(SOLUTION)
    deleted.cells = [c for c in deleted.cells if "check" not in c.metadata.get("tags", [])]
    return {
        "ada": (notebook(SOLUTION), 6, None),
        "ben": (notebook(EXERCISE), 0, "not written yet"),
        "patched-checks": (notebook(EXERCISE, PATCH_CHECKS), 0, "not written yet"),
        "patched-libraries": (notebook(EXERCISE, PATCH_LIBRARIES), 0, "not written yet"),
        "fake-verdicts": (notebook(EXERCISE, FAKE_VERDICTS), 0, "not written yet"),
        "edited-checks": (edited, 6, None),
        "deleted-checks": (deleted, 6, None),
        "exits": (
            notebook(SOLUTION, "import os\nos._exit(0)", at=3),
            6,
            "ended the Python process",
        ),
        "loops": (notebook(SOLUTION, "while True:\n    pass"), 6, "stopped after the time limit"),
        "ignores-interrupts": (notebook(EXERCISE, STUBBORN_LOOP), 0, "ignored the interrupt"),
        "floods-output": (notebook(SOLUTION, 'print("x" * 20_000_000)'), 6, "OSError"),
        "hogs-memory": (notebook(SOLUTION, MEMORY_HOG), 6, "MemoryError"),
        "starts-a-process": (notebook(EXERCISE, BACKGROUND), 0, "not written yet"),
        "writes-outside": (notebook(SOLUTION, writer), 6, "OSError"),
        "reads-another": (notebook(SOLUTION, reader), 6, "FileNotFoundError"),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if problem := sandbox.sandbox_problem():
        if os.environ.get("CI", "").lower() == "true":  # .ci/run installs bubblewrap
            pytest.fail(problem)
        pytest.skip(problem)
    folder = tmp_path_factory.mktemp("submissions")
    expected = fixtures(folder)
    for name, (nb, _, _) in expected.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
    (folder / "broken.ipynb").write_text('{"cells": [ not json')
    (folder / "unknown.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    before = digests(folder)
    options = grading.Options(cell_timeout=2, memory_bytes=2 * 2**30, output_bytes=2**20, seed=1)
    grades = {g.student: g for g in grading.grade_folder(folder, options, jobs=2)}
    assert digests(folder) == before, "the grader modified a submission"
    return expected, grades, folder, options


def test_each_hostile_submission_gets_what_its_code_earns(graded):
    expected, grades, _, _ = graded
    got = {name: grades[name].total for name in expected}
    assert got == {name: points for name, (_, points, _) in expected.items()}
    for name, (_, _, note) in expected.items():
        assert grades[name].max_points == 6
        if note is None:
            assert grades[name].status == "graded" and not grades[name].notes, grades[name].notes
        else:
            assert any(note in n for n in grades[name].notes), (name, grades[name].notes)


def test_nothing_outlives_grading_or_escapes_the_folder(graded):
    found = subprocess.run(["pgrep", "-f", MARK], capture_output=True, text=True)
    assert found.stdout.strip() == "", "a submission's background process survived grading"
    assert not OUTSIDE.exists() and not (ROOT / "escaped.txt").exists()


def test_unreadable_and_unknown_notebooks_are_reported(graded):
    _, grades, _, _ = graded
    assert grades["broken"].status.startswith("unreadable") and grades["broken"].max_points == 0
    assert grades["unknown"].status.startswith("unknown lesson")


def test_parallel_grading_equals_serial_and_shards_merge(graded, tmp_path):
    _, grades, folder, options = graded
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in ("ada", "ben"):
        shutil.copy(folder / f"{name}.ipynb", subset)
    serial = grading.grade_folder(subset, options, jobs=1)
    assert [(g.student, g.points, g.notes) for g in serial] == [
        (grades[g.student].student, grades[g.student].points, grades[g.student].notes)
        for g in serial
    ]
    shards = []
    for i in (1, 2):
        shards.append(tmp_path / f"shard{i}.csv")
        grading.write_csv(grading.grade_folder(subset, options, shard=(i, 2)), shards[-1])
    grading.merge_csv(shards, tmp_path / "merged.csv")
    grading.write_csv(serial, tmp_path / "serial.csv")
    merged = list(csv.DictReader((tmp_path / "merged.csv").open()))
    assert merged == list(csv.DictReader((tmp_path / "serial.csv").open()))


def test_each_solution_check_cell_is_one_declared_exercise():
    from lora_course import checks

    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        calls = [
            cell.source.split("checks.")[1].split("(")[0]
            for cell in nbformat.read(path, 4).cells
            if "check" in cell.metadata.get("tags", [])
        ]
        assert all(callable(getattr(checks, name, None)) for name in calls), calls
        assert len(calls) == len(EXERCISES[path.name[:2]]), path.name
