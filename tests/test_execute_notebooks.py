"""tools/execute_notebooks.py: what it does to a notebook after running it."""

import importlib.util
from pathlib import Path

import nbformat

TOOL = Path(__file__).resolve().parents[1] / "tools" / "execute_notebooks.py"
spec = importlib.util.spec_from_file_location("execute_notebooks", TOOL)
execute_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebooks)


def widget(model_name: str, **state) -> dict:
    return {"model_name": model_name, "model_module": "@jupyter-widgets/controls", "state": state}


def notebook_with_a_bar(done: float, total: float | None):
    """One cell that displayed a tqdm widget, as nbclient saves it."""
    nb = nbformat.v4.new_notebook()
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    first_frame = "training:   0%|          | 0/4 [00:00<?, ?it/s]"
    output = nbformat.v4.new_output(
        "display_data", data={"text/plain": first_frame, execute_notebooks.WIDGET_VIEW: view}
    )
    nb.cells.append(nbformat.v4.new_code_cell("train()", outputs=[output]))
    state = {
        "box": widget("HBoxModel", children=["IPY_MODEL_a", "IPY_MODEL_b", "IPY_MODEL_c"]),
        "a": widget("HTMLModel", value="training:\u2007100%"),
        "b": widget("FloatProgressModel", value=done, max=total),
        "c": widget("HTMLModel", value="\u20074/4\u2007[00:02&lt;00:00,\u2007\u20071.9it/s]"),
    }
    nb.metadata["widgets"] = {execute_notebooks.WIDGET_STATE: {"state": state}}
    return nb, output


def test_a_finished_bar_is_saved_as_its_last_frame_not_its_first():
    nb, output = notebook_with_a_bar(4.0, 4.0)
    execute_notebooks.finished_bars_as_text(nb)
    assert output["data"]["text/plain"] == "training: 100%|██████████| 4/4 [00:02<00:00,  1.9it/s]"


def test_bars_without_a_usable_state_keep_their_text():
    for total in (None, 0):
        nb, output = notebook_with_a_bar(4.0, total)
        execute_notebooks.finished_bars_as_text(nb)
        assert output["data"]["text/plain"].startswith("training:   0%")
    nb, output = notebook_with_a_bar(4.0, 4.0)
    nb.metadata.pop("widgets")
    execute_notebooks.finished_bars_as_text(nb)  # a notebook saved without widget state
    assert output["data"]["text/plain"].startswith("training:   0%")
