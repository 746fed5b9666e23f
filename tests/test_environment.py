"""environment.yml stays in sync with pyproject.toml."""

import re
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
