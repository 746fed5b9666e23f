"""Observations as files: tensors in safetensors, everything else in JSON (never pickle).

The sandboxed runner writes what a submission's objects did; the grader reads it back. Both formats
load as data only, so nothing a submission writes can run code in the grader's process.
"""

from __future__ import annotations

from json import dumps, loads  # bound now: a submission that patches json.dumps changes nothing
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MAX_BYTES = 64 * 2**20  # a grader never needs more; a larger file is refused, not read


def save(folder: Path, observations: dict[str, dict]) -> None:
    """Write {"02.1/visible": {key: value}} as observations.json + observations.safetensors."""
    tensors, data = {}, {}
    for name, values in observations.items():
        data[name] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous().clone()
                data[name][key] = {"__tensor__": f"{name}/{key}"}
            else:
                data[name][key] = value
    save_file(tensors, Path(folder) / "observations.safetensors")
    (Path(folder) / "observations.json").write_text(dumps(data, default=str))


def load(folder: Path) -> dict[str, dict]:
    """Read what `save` wrote; raise ValueError if it is missing, too large or malformed."""
    paths = [Path(folder) / "observations.json", Path(folder) / "observations.safetensors"]
    for path in paths:
        if not path.is_file() or path.is_symlink():
            raise ValueError(f"{path.name} was not written")
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"{path.name} is larger than {MAX_BYTES // 2**20} MiB")
    data, tensors = loads(paths[0].read_text()), load_file(paths[1])
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError("observations.json is not a dict of dicts")
    for values in data.values():
        for key, value in values.items():
            if isinstance(value, dict) and set(value) == {"__tensor__"}:
                values[key] = tensors[value["__tensor__"]]
    return data
