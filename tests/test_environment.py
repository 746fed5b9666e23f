"""The set-up: environment.yml in sync with pyproject.toml, locked versions, clear failures."""

import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    return pyproject, conda, pip


def test_python_version_satisfies_requires_python():
    pyproject, conda, _ = load()
    (python,) = [d for d in conda if d.startswith("python")]
    env_version = tuple(int(x) for x in python.split("=")[1].split("."))
    minimum = tuple(
        int(x) for x in re.search(r">=\s*([\d.]+)", pyproject["requires-python"])[1].split(".")
    )
    assert env_version >= minimum, f"{python} is older than requires-python {minimum}"


def test_pip_installs_this_package_with_its_dev_extra():
    pyproject, conda, pip = load()
    assert "pip" in conda
    (install,) = [line for line in pip if line.startswith("-e")]
    extras = re.search(r"\[(.*)\]", install)[1].split(",")
    assert extras == ["dev"] and "dev" in pyproject["optional-dependencies"]


def test_environment_adds_no_dependency_of_its_own():
    """Dependencies live in pyproject.toml only; a copy here would drift."""
    _, conda, pip = load()
    assert sorted(d.split("=")[0] for d in conda) == ["pip", "python"]
    assert [line for line in pip if not line.startswith("-e")] == []


def test_setup_refuses_an_old_python_in_one_line_and_leaves_no_venv(tmp_path):
    fake = tmp_path / "python3.10"  # answers like Python 3.10 would
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "Python 3.10.12"; exit 0; fi\n'
        "exit 1\n"  # `python -c 'sys.exit(sys.version_info < (3, 11))'` on 3.10
    )
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["bash", "tools/setup_env.sh", str(venv)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHON": str(fake)},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "needs Python 3.11 or newer" in result.stderr and "Python 3.10.12" in result.stderr
    assert not venv.exists()


def test_setup_installs_the_locked_versions():
    """constraints.txt pins every dependency exactly (torch aside) and setup_env.sh uses it."""
    lines = [
        line for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]  # fmt: skip
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+\-!]+", line) for line in lines), lines
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    pyproject, _, _ = load()
    wanted = pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=!~\[ ]", d)[0].lower().replace("_", "-") for d in wanted}
    assert names - {"torch"} <= pinned, sorted(names - {"torch"} - pinned)
    assert not {"torch", "triton"} & pinned, "torch is chosen per machine (GPU, Colab, CPU)"
    assert '--constraint "$constraints"' in (ROOT / "tools" / "setup_env.sh").read_text()
