"""The grader's containment decisions, tested without running a sandbox."""

from pathlib import Path

from lora_course.grading import __main__ as cli
from lora_course.grading import sandbox
from lora_course.grading.__main__ import main


def test_without_bubblewrap_the_grader_refuses_and_says_how_to_install_it(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert "apt-get install bubblewrap" in sandbox.sandbox_problem()
    monkeypatch.setattr(cli, "sandbox_problem", sandbox.sandbox_problem)
    assert main([str(tmp_path), "--out", str(tmp_path / "grades.csv")]) == 2
    error = capsys.readouterr().err
    assert "bubblewrap" in error and "--no-sandbox" in error
    assert not (tmp_path / "grades.csv").exists()


def test_submissions_inside_the_course_folder_stay_hidden(tmp_path, monkeypatch):
    home, course = tmp_path / "home", tmp_path / "home" / "course"
    submissions = course / "submissions"
    submissions.mkdir(parents=True)
    monkeypatch.setattr(sandbox, "_package_root", lambda: course)
    args = sandbox.bwrap_prefix(tmp_path / "work", [home, submissions])
    pairs = list(zip(args, args[1:], strict=False))
    shown = max(i for i, pair in enumerate(pairs) if pair == ("--ro-bind", str(course.resolve())))
    hidden = pairs.index(("--tmpfs", str(submissions.resolve())))
    assert pairs.index(("--tmpfs", str(home.resolve()))) < shown < hidden
    for flag in ("--unshare-all", "--die-with-parent", "--new-session"):
        assert flag in args
    assert args[args.index("--bind") + 1] == str(tmp_path / "work")  # the only writable folder


def test_shard_and_size_arguments_are_parsed_strictly():
    assert cli._shard("2/5") == (2, 5)
    assert cli._size("4G") == 4 * 2**30 and cli._size("512M") == 512 * 2**20
    for bad in ("0/3", "4/3", "x"):
        try:
            cli._shard(bad)
        except Exception as error:  # argparse's error type
            assert "i/n" in str(error)
        else:
            raise AssertionError(f"{bad} accepted")


def test_a_shard_is_a_deterministic_slice_and_the_shards_cover_everything(tmp_path):
    for name in ("d", "a", "c", "b", "e"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    from lora_course.grading.grader import submissions

    slices = [submissions(tmp_path, (i, 2)) for i in (1, 2)]
    assert sorted(slices[0] + slices[1]) == submissions(tmp_path)
    assert [p.stem for p in slices[0]] == ["a", "c", "e"]
    assert all(isinstance(p, Path) for p in slices[1])


def test_a_home_folder_of_slash_is_not_hidden(tmp_path):
    args = sandbox.bwrap_prefix(tmp_path, [Path("/")])  # HOME=/ in some containers
    pairs = list(zip(args, args[1:], strict=False))
    assert ("--tmpfs", "/") not in pairs and ("--ro-bind", "/") in pairs


def test_a_notebook_that_breaks_the_grader_is_reported_in_its_row(tmp_path):
    from lora_course.grading.grader import Options, grade_folder

    notebook = '{"cells": [], "metadata": {"lora_course": "not a dict"}, "nbformat": 4, '
    (tmp_path / "odd.ipynb").write_text(notebook + '"nbformat_minor": 5}')
    (tmp_path / "weird.ipynb").write_text('{"cells": 5, "metadata": {}, "nbformat": 4}')
    grades = grade_folder(tmp_path, Options(use_sandbox=False))
    assert [g.student for g in grades] == ["odd", "weird"]
    assert grades[0].status.startswith("unknown lesson")
    assert grades[1].status.startswith(("unreadable", "grader error"))
