"""Generate exercises/ from solutions/: the solutions are the one source of truth.

In a solution notebook, code between `### BEGIN SOLUTION: <hint>` and `### END SOLUTION` is the
answer. The exercise notebook gets `raise NotImplementedError("<hint>")` in its place, a note
that it is generated, and no outputs.

python tools/make_exercises.py           # rewrite exercises/ (make exercises)
python tools/make_exercises.py --check   # fail if exercises/ differs from what solutions give (CI)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling script, also run by tests
from colab_cells import settings, with_colab_cells  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, EXERCISES = ROOT / "solutions", ROOT / "exercises"
BEGIN = re.compile(r"^(?P<indent>\s*)### BEGIN SOLUTION(?::\s*(?P<hint>.*))?$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
NOTE = (
    "> **Generated from `solutions/{name}` by `tools/make_exercises.py`: do not edit.** "
    "Change the solution notebook and run `make exercises`."
)


def strip_solutions(source: str, where: str) -> str:
    """Replace every marked solution region with a NotImplementedError stub carrying its hint."""
    lines, out, inside = source.splitlines(), [], None
    for number, line in enumerate(lines, 1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if inside is not None:
                raise ValueError(f"{where} line {number}: BEGIN SOLUTION inside another region")
            inside = begin
            hint = (begin["hint"] or "write your code here").replace('"', "'")
            out.append(f'{begin["indent"]}raise NotImplementedError("{hint}")')
        elif end:
            if inside is None:
                raise ValueError(f"{where} line {number}: END SOLUTION without BEGIN")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise ValueError(f"{where}: BEGIN SOLUTION is never closed")
    return "\n".join(out)


def exercise_from(solution_path: Path):
    """The exercise notebook for one solution notebook (not yet written)."""
    notebook = nbformat.read(solution_path, as_version=4)
    regions = 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        regions += cell.source.count("### BEGIN SOLUTION")
        cell.source = strip_solutions(cell.source, f"{solution_path.name} cell {index}")
        cell.outputs, cell.execution_count = [], None
    if not regions:
        raise ValueError(f"{solution_path.name} has no ### BEGIN SOLUTION regions")
    note = nbformat.v4.new_markdown_cell(NOTE.format(name=solution_path.name))
    note.id = "generated-note"
    notebook.cells.insert(1, note)
    notebook.metadata.pop("widgets", None)
    repository, ref = settings()  # the badge opens the exercise, not its solution
    return with_colab_cells(notebook, f"exercises/{solution_path.name}", repository, ref, False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    solutions = sorted(SOLUTIONS.glob("*.ipynb"))
    expected_names = {path.name for path in solutions}
    for path in solutions:
        text = nbformat.writes(exercise_from(path)) + "\n"
        target = EXERCISES / path.name
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target.relative_to(ROOT))
        else:
            target.parent.mkdir(exist_ok=True)
            target.write_text(text)
            print(f"wrote {target.relative_to(ROOT)}")
    extra = [p.relative_to(ROOT) for p in EXERCISES.glob("*.ipynb") if p.name not in expected_names]
    if args.check and (stale or extra):
        for path in stale:
            print(f"{path} differs from what solutions/ generates", file=sys.stderr)
        for path in extra:
            print(f"{path} has no solution notebook", file=sys.stderr)
        print("run `make exercises` and commit the result", file=sys.stderr)
        return 1
    if args.check:
        print(f"exercises/ is up to date ({len(solutions)} notebooks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
