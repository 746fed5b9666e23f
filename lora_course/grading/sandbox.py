"""Where a submission runs: a bubblewrap sandbox, watched from outside, killed whole when done.

Inside: a read-only view of the system (Python and the course included), a private writable folder
(the submission's working directory) and a private /tmp, no network, its own process namespace
that dies with the grader; the submissions folder and the home folder are not visible. The runner
caps its own memory and output (runner.py). Outside, the grader watches progress.json and kills
the whole sandbox when a cell runs past its limit and ignores the interrupt, or the run as a whole
does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

GRACE = 3.0  # seconds a cell may overrun its limit (the interrupt comes first) before the kill
INSTALL = (
    "the grader runs each submission in a bubblewrap sandbox: install it with "
    "`sudo apt-get install bubblewrap` (Debian, Ubuntu) or `sudo dnf install bubblewrap`, "
    "or pass --no-sandbox to grade without one (only for submissions you trust)"
)


def sandbox_problem() -> str | None:
    """None if bubblewrap can start a sandbox here, else what is wrong and how to fix it."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return f"bubblewrap (bwrap) is not installed: {INSTALL}"
    probe = subprocess.run(
        [bwrap, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"bwrap cannot create a sandbox here ({probe.stderr.strip()[:200]}): {INSTALL}"
    return None


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def bwrap_prefix(workdir: Path, hidden: list[Path]) -> list[str]:
    """The bwrap arguments that contain one run: read-only system, writable workdir only."""
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    needed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, _package_root())}
    private = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]  # empty, writable, its own
    hidden = [f.resolve() for f in hidden if f.exists() and f.resolve() != Path("/")]  # HOME=/
    for folder in [*private, *hidden]:
        args += ["--tmpfs", str(folder)]
        for path in sorted(p for p in needed if _under(p, folder)):
            args += ["--ro-bind", str(path), str(path)]  # the course itself stays visible
    args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
    args += ["--unshare-all", "--die-with-parent", "--new-session", "--"]
    return args


def _package_root() -> Path:
    return Path(__file__).resolve().parents[2]  # the folder holding lora_course/


@dataclass
class RunResult:
    """What one run of the runner left behind, read from outside."""

    finished: bool  # the runner wrote its observations and exited
    stopped_at: dict | None = None  # progress.json when the run died or was killed
    killed: str = ""  # why the grader killed it, if it did
    cells: dict[int, str] = field(default_factory=dict)  # cell index -> "ok", "timeout", ename
    output_tail: str = ""  # the end of what the run printed, when it did not finish


def run(workdir: Path, plan: dict, sandbox: bool) -> RunResult:
    """Run the runner on `plan` in `workdir`, watching it; return what it left behind."""
    for name in ("observations.json", "observations.safetensors", "done", "progress.json"):
        (workdir / name).unlink(missing_ok=True)
    (workdir / "cells.jsonl").unlink(missing_ok=True)
    (workdir / "plan.json").write_text(json.dumps(plan))
    argv = [sys.executable, "-m", "lora_course.grading.runner", str(workdir)]
    if sandbox:
        argv = bwrap_prefix(workdir, [Path(p) for p in plan["hidden"]]) + argv
    limit = plan["cell_timeout"]
    deadline = time.monotonic() + 30 + (limit + GRACE) * (len(plan["cells"]) + len(plan["observe"]))
    with open(workdir / "output.log", "wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=_environment(workdir),
            start_new_session=True,  # one process group: killed as a whole
        )
        killed = _watch(process, workdir / "progress.json", limit, deadline)
    progress = _read_json(workdir / "progress.json")
    finished = (workdir / "done").is_file() and not killed
    tail = "" if finished else _tail(workdir / "output.log")
    return RunResult(finished, None if finished else progress, killed, _cells(workdir), tail)


def _tail(path: Path, size: int = 300) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode("utf-8", "replace").strip().replace("\n", " | ")


def _watch(process, progress_path: Path, limit: float, deadline: float) -> str:
    """Wait for the process; kill it (and everything it started) when it runs too long."""
    seen, since = None, time.monotonic()
    while process.poll() is None:
        time.sleep(0.1)
        progress = _read_json(progress_path)
        if progress != seen:
            seen, since = progress, time.monotonic()
        why = ""
        if seen is not None and time.monotonic() - since > limit + GRACE:
            why = "ran past the time limit and ignored the interrupt"
        elif time.monotonic() > deadline:
            why = "the submission as a whole ran past its time limit"
        if why:
            os.killpg(process.pid, signal.SIGKILL)  # bwrap's namespace dies with it
            process.wait()
            return why
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever it started without a sandbox
    except ProcessLookupError:
        pass
    return ""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cells(workdir: Path) -> dict[int, str]:
    cells = {}
    try:
        lines = (workdir / "cells.jsonl").read_text().splitlines()
    except OSError:
        return cells
    for line in lines:
        try:
            record = json.loads(line)
            cells[int(record["cell"])] = str(record["status"])[:80]
        except (ValueError, KeyError, TypeError):
            continue
    return cells


def _environment(workdir: Path) -> dict[str, str]:
    """A small, fixed environment: one thread per submission (--jobs runs several at once)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LORA_COURSE_CACHE": str(workdir / "cache"),
        "MPLCONFIGDIR": str(workdir / ".matplotlib"),
    }
