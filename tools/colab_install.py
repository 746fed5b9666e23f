"""Install the course into a runtime that brings its own torch (Colab): run by the setup cells.

python tools/colab_install.py CHECKOUT

Colab's torch is a CUDA build matched to its GPU and drivers; replacing it with PyPI's would cost
minutes and may break CUDA. So the course package goes in without its dependencies, and they go in
with the course's constraints (constraints.txt) plus one more, torch == the installed version: pip
then keeps that torch or stops with an error, and never swaps it. The installed torch must be
importable; the course's own lower bound on torch is not enforced here (Colab decides).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

# Packages that come with the runtime's torch build and must stay as they are.
KEPT = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-[\w-]+)\s*(==|$)", re.IGNORECASE)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def runtime_constraints(constraints: str, torch_version: str) -> str:
    """constraints.txt without the runtime's torch family, and torch pinned to what is installed."""
    lines = [line for line in constraints.splitlines() if not KEPT.match(line.strip())]
    return "\n".join([*lines, f"torch=={torch_version}"]) + "\n"


def dependencies_besides_torch(pyproject: str) -> list[str]:
    """The course package's runtime dependencies, torch left out (the runtime brings its own)."""
    requirements = tomllib.loads(pyproject)["project"]["dependencies"]
    return [r for r in requirements if NAME.match(r).group(0).lower() != "torch"]


def main(checkout: Path) -> int:
    torch_before = importlib.metadata.version("torch")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text(
            runtime_constraints((checkout / "constraints.txt").read_text(), torch_before)
        )
        requirements = dependencies_besides_torch((checkout / "pyproject.toml").read_text())
        subprocess.run([*pip, "--constraint", str(constraints), *requirements], check=True)
        subprocess.run([*pip, "--no-deps", str(checkout)], check=True)
    torch_after = importlib.metadata.version("torch")
    if torch_after != torch_before:
        print(f"error: torch changed from {torch_before} to {torch_after}", file=sys.stderr)
        return 1
    course = importlib.metadata.version("lora-course")
    print(f"Installed lora-course {course} from {checkout}; torch {torch_before} kept as it was.")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1], "pyproject.toml").is_file():
        sys.exit(f"usage: {sys.argv[0]} CHECKOUT (a folder with the course's pyproject.toml)")
    sys.exit(main(Path(sys.argv[1])))
