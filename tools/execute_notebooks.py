"""Execute notebooks top to bottom in a fresh kernel each, printing how long each one took.

python tools/execute_notebooks.py --output-dir build/course notebooks/*.ipynb   # make course
python tools/execute_notebooks.py --inplace notebooks/*.ipynb                  # make notebooks
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from lora_course.kernel import ThisPythonKernelManager


def execute(path: Path, timeout: int):
    """Run `path` top to bottom; return (executed notebook, seconds, error or None)."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_manager_class=ThisPythonKernelManager,  # the client owns it and shuts it down
        timeout=timeout,
        record_timing=False,  # no per-cell timestamps in the saved file
        resources={"metadata": {"path": str(path.parent)}},  # run from the notebook's folder
    )
    start = time.perf_counter()
    try:
        client.execute()
        error = None
    except CellExecutionError as failure:
        error = failure
    finished_bars_as_text(notebook)
    return notebook, time.perf_counter() - start, error


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def finished_bars_as_text(notebook) -> None:
    """Give each tqdm widget a plain-text fallback that shows where the bar ended.

    Without this, the saved text of a bar is its first frame ("0%| | 0/13"), which is what GitHub
    and any viewer without the widget state shows. The final state is in the notebook's widget
    metadata: an HBox of (label, FloatProgress, counts) per bar.
    """
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})

    def value(child: str, key: str):
        return state.get(child.removeprefix("IPY_MODEL_"), {}).get("state", {}).get(key)

    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            box = state.get(view["model_id"], {}) if view else {}
            children = box.get("state", {}).get("children", [])
            if box.get("model_name") != "HBoxModel" or len(children) != 3:
                continue
            label, bar, counts = children
            done, total = value(bar, "value"), value(bar, "max")
            if not isinstance(done, (int, float)) or not total:
                continue
            filled = round(10 * min(done / total, 1))
            text = f"{value(label, 'value')}|{'█' * filled:<10}|{value(counts, 'value')}"
            output["data"]["text/plain"] = html.unescape(text).replace("\u2007", " ")


def describe(notebook, error: CellExecutionError) -> str:
    """Which cell failed and how, in two lines."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return f"cell {index} ({first_line[:60]!r}): {output.ename}: {output.evalue}"
    return str(error).strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--inplace", action="store_true", help="overwrite each notebook")
    where.add_argument("--output-dir", type=Path, help="write executed copies here")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()

    failed = []
    for path in args.notebooks:
        output = path if args.inplace else args.output_dir / path.name
        print(f"executing {path} ...", flush=True)
        notebook, seconds, error = execute(path, args.timeout)
        if error is None or not args.inplace:  # never overwrite a source notebook with a failure
            output.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, output)
        if error is not None:
            print(f"  FAILED after {seconds:.1f} s: {describe(notebook, error)}", flush=True)
            failed.append(path)
            continue
        print(f"  {seconds:6.1f} s -> {output}", flush=True)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(map(str, failed))}")
        return 1
    if args.output_dir:
        print(f"\nExecuted notebooks are in {args.output_dir}/ (open them with `jupyter lab`).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
