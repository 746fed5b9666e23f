"""Colab in one click: every notebook's badge and setup cell (tools/colab_cells.py), the installer
that keeps the runtime's torch (tools/colab_install.py), and a Colab-like run of two notebooks.
"""

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
ALL_NOTEBOOKS = sorted(
    p for folder in ("notebooks", "exercises", "solutions") for p in (ROOT / folder).glob("*.ipynb")
)


def load_tool(name):
    """A script of tools/ as a module (tools/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


colab_cells, colab_install = load_tool("colab_cells"), load_tool("colab_install")


def test_the_repository_is_written_once_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    url = project["project"]["urls"]["Repository"]
    assert url == "https://github.com/seed-534ec894/lora-from-the-ground-up"
    assert colab_cells.settings() == (url, project["tool"]["lora_course"]["colab-ref"])


def test_the_badges_and_setup_cells_are_up_to_date():
    result = subprocess.run([sys.executable, "tools/colab_cells.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_notebook_opens_its_own_path_and_sets_up_before_any_code(path):
    notebook = nbformat.read(path, as_version=4)
    repository, ref = colab_cells.settings()
    relative = path.relative_to(ROOT).as_posix()
    title = notebook.cells[0].source.splitlines()
    assert title[0].startswith("# ") and title[2] == colab_cells.badge(repository, ref, relative)
    assert f"/blob/{ref}/{relative})" in title[2]
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code[0].get("id") == colab_cells.SETUP_ID and "google.colab" in code[0].source
    assert sum(cell.get("id") == colab_cells.SETUP_ID for cell in notebook.cells) == 1


def test_the_setup_cell_does_nothing_off_colab(tmp_path):
    setup = colab_cells.setup_cell("https://github.com/o/n", "main", executed=True)
    result = subprocess.run([sys.executable, "-c", setup.source], cwd=tmp_path,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout == setup.outputs[0].text == colab_cells.OFF_COLAB + "\n"
    assert list(tmp_path.iterdir()) == []


def test_generating_twice_changes_nothing_and_replaces_an_old_badge():
    notebook = nbformat.read(ROOT / "notebooks" / "02_lora_linear_from_scratch.ipynb", 4)
    add = colab_cells.with_colab_cells
    once = add(notebook, "x/02.ipynb", "https://github.com/o/n", "v1", True)
    text = nbformat.writes(once)
    again = add(once, "x/02.ipynb", "https://github.com/o/n", "v1", True)
    assert nbformat.writes(again) == text and "/blob/v1/x/02.ipynb" in text
    moved = add(again, "y/02.ipynb", "https://github.com/o/m", "v2", True)
    assert "blob/v1" not in nbformat.writes(moved) and moved.cells[0].source.count("Colab") == 1
    counts = [cell.execution_count for cell in moved.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))


@pytest.mark.parametrize(
    "url", ["https://gitlab.com/o/n", "github.com/o/n", "https://github.com/o"]
)
def test_a_repository_that_is_not_on_github_is_refused(tmp_path, url):
    pyproject = tmp_path / "pyproject.toml"
    urls = f'[project.urls]\nRepository = "{url}"\n'
    pyproject.write_text(urls + '[tool.lora_course]\ncolab-ref = "main"\n')
    with pytest.raises(ValueError, match="Repository must be"):
        colab_cells.settings(pyproject)


def test_the_installer_pins_the_runtimes_torch_and_drops_its_cuda_family():
    constraints = "accelerate==1.15.0\ntorch==2.13.0\nnvidia-cublas-cu12==12.9\ntriton==3.5\nx==1\n"
    kept = colab_install.runtime_constraints(constraints, "2.9.0+cu126").splitlines()
    assert kept == ["accelerate==1.15.0", "x==1", "torch==2.9.0+cu126"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    requirements = colab_install.dependencies_besides_torch(pyproject)
    assert "peft>=0.21" in requirements and not any(r.startswith("torch") for r in requirements)


@pytest.mark.slow  # a fresh venv, pip installs from local disk, two notebooks: about 3 minutes
def test_a_colab_like_runtime_installs_the_course_and_runs_two_notebooks(
    tmp_path, smollm2_folder, monkeypatch
):
    """A clean venv with this machine's torch (as Colab has its own) and no course package; the
    setup cell believes it is on Colab and installs from a copy of this checkout."""
    from nbclient import NotebookClient

    torch_version = importlib.metadata.version("torch")
    venv = tmp_path / "colab-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    ipykernel = importlib.metadata.version("ipykernel")
    preinstalled = [f"torch=={torch_version}", f"ipykernel=={ipykernel}"]
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *preinstalled], check=True)
    checkout = tmp_path / "checkout"  # what `git clone` gives: no .venv, no build/
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache"))  # fmt: skip
    fake_colab = tmp_path / "fake-colab" / "google" / "colab"
    fake_colab.mkdir(parents=True)
    (fake_colab / "__init__.py").write_text('"""Stands in for Colab\'s google.colab."""\n')
    kernels = tmp_path / "jupyter" / "kernels" / "colab-like"
    kernels.mkdir(parents=True)
    env = {
        "PYTHONPATH": str(fake_colab.parents[1]),  # `import google.colab` works: "on Colab"
        "LORA_COURSE_SOURCE": str(checkout),  # install from here instead of cloning
        "LORA_COURSE_MODEL": str(smollm2_folder),  # no hub here (Colab has it)
        "LORA_COURSE_FAST": "1",
        "LORA_COURSE_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "colab-like", "language": "python", "env": env}  # fmt: skip
    (kernels / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # where the kernel is found

    ran = {}
    for relative in (
        "notebooks/01_rank_and_svd_energy.ipynb",
        "exercises/02_lora_linear_from_scratch.ipynb",
    ):
        notebook = nbformat.read(ROOT / relative, as_version=4)
        client = NotebookClient(notebook, kernel_name="colab-like", timeout=600, allow_errors=True,
                                resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
        client.execute()
        ran[relative] = notebook
    for relative, notebook in ran.items():
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        printed = "".join(o.get("text", "") for o in code[0].outputs)
        assert "Installed lora-course" in printed and f"torch {torch_version} kept" in printed
        errors = [(c, o) for c in code for o in c.outputs if o.output_type == "error"]
        if relative.startswith("notebooks/"):
            assert not errors, [o.evalue for _, o in errors]
        else:  # untouched stubs: every check cell fails with its "not written yet", nothing else
            checks = [c for c in code if "check" in c.metadata.get("tags", [])]
            assert checks and [c for c, _ in errors] == checks
            assert all(o.ename == "AssertionError" for _, o in errors), errors
            assert all("not written yet" in o.evalue for _, o in errors), errors
    after = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert after.stdout.strip() == torch_version
