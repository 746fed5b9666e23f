"""Every lesson notebook follows the course's conventions (see notebooks/README.md)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell):
    return "".join(cell["source"])


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_name_title_and_recap(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), "name notebooks NN_topic.ipynb"
    first, last = cells(path)[0], cells(path)[-1]
    assert first["cell_type"] == "markdown" and source(first).startswith(f"# {path.name[:2]} ·")
    assert "**What you will learn**" in source(first)
    assert last["cell_type"] == "markdown" and "## Recap" in source(last)
    assert "**Next:**" in source(last)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_executed_in_order_with_outputs(path):
    code = [c for c in cells(path) if c["cell_type"] == "code" and source(c).strip()]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        "run the notebook top to bottom (make notebooks)"
    )
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, "a committed notebook must not contain errors"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_imports_the_installed_package(path):
    for cell in cells(path):
        assert not re.search(r"sys\.path\.(insert|append)", source(cell)), "import lora_course"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_plots_are_not_compared(path):
    for cell in cells(path):
        shows_plot = any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
        if shows_plot:
            assert "nbval-ignore-output" in cell["metadata"].get("tags", []), source(cell)[:60]
