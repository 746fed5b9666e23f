"""A versioned adapter registry on disk: publish, list, load what fits, yank (notebook 10).

An adapter is only correct on the base it was trained on, with that base's tokenizer, in a slot
shaped for it. The registry writes that down when a version is published and checks it before
anything is loaded:

    <root>/<name>/v<N>/adapter_config.json        PEFT's files and the base's fingerprint,
                      adapter_model.safetensors   as adapters.save_peft_adapter wrote them
                      lora_course_base.json
                      manifest.json               written last: base, adapter, training, metrics,
                                                  and the sha256 of every file above
    <root>/<name>/v<N>/YANKED                     a withdrawn version and why (rolling back)

A version is staged in a hidden folder and appears by one atomic rename, so a crash leaves no
half-written `v<N>`; a folder without a readable manifest, or whose files no longer match it, is
reported and never loaded. `choose_version` is the rule on plain manifests (exercise 10.2).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .adapters import (
    ADAPTER_WEIGHTS,
    BASE_FILE,
    AdapterMismatchError,
    _unwrap,
    base_fingerprint,
)

MANIFEST = "manifest.json"
YANKED = "YANKED"
ADAPTER_FILES = ("adapter_config.json", ADAPTER_WEIGHTS, BASE_FILE)
_VERSION = re.compile(r"v(\d+)")


class RegistryError(ValueError):
    """A registry folder that cannot be used as asked: missing, incomplete or corrupt."""


class IncompatibleAdapterError(AdapterMismatchError):
    """No version of the adapter fits this base and slot; the message says why for each."""


@dataclass(frozen=True)
class Release:
    """One complete, published version of an adapter: its folder and its manifest."""

    name: str
    version: int
    folder: Path
    manifest: dict

    @property
    def yanked(self) -> str | None:
        """Why the version was withdrawn, or None."""
        return self.manifest.get("yanked")


def tokenizer_fingerprint(tokenizer) -> str:
    """The sha256 of a tokenizer's vocabulary and special tokens: "sha256:" and 16 hex digits."""
    text = json.dumps(
        {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.all_special_tokens},
        sort_keys=True,
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def base_record(model: nn.Module, tokenizer, model_id: str) -> dict:
    """What a manifest says about a base model, and what a loader compares it with (notebook 10)."""
    config = _unwrap(model).config
    return {
        "model_id": model_id,
        "architecture": (config.architectures or [type(_unwrap(model)).__name__])[0],
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "fingerprint": base_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }


def adapter_record(folder: str | Path) -> dict:
    """Rank, alpha, targets and scaling kind of a saved PEFT adapter (its adapter_config.json)."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    targets = config["target_modules"]
    return {
        "r": config["r"],
        "alpha": config["lora_alpha"],
        "targets": sorted([targets] if isinstance(targets, str) else targets),
        "scaling": "alpha/sqrt(r)" if config.get("use_rslora") else "alpha/r",
        "dora": bool(config.get("use_dora")),
    }


def compatibility_problems(manifest: dict, base: dict, slot: dict | None = None) -> list[str]:
    """Why the version in `manifest` cannot serve on `base` (a base_record) in `slot`; [] if it can.

    `slot`, when given, is what a serving slot accepts: {"targets": [...], "max_rank": r}, as a
    hot-swap slot or a server's `max_lora_rank` does.
    """
    trained, adapter = manifest["base"], manifest["adapter"]
    if trained["architecture"] != base["architecture"]:
        return [
            f"a different architecture ({trained['architecture']}, this base is a "
            f"{base['architecture']})"
        ]
    problems = []
    sizes = ("hidden_size", "num_hidden_layers")
    if any(trained[k] != base[k] for k in sizes):
        found = ", ".join(f"{k} {trained[k]} vs {base[k]}" for k in sizes if trained[k] != base[k])
        problems.append(f"a different model size ({found})")
    if trained["tokenizer"] != base["tokenizer"]:
        problems.append(
            f"a changed tokenizer or vocabulary ({trained['tokenizer']}, this base's "
            f"{base['tokenizer']})"
        )
    if not problems and trained["fingerprint"] != base["fingerprint"]:
        problems.append(
            f"a different base: same shapes, other weights ({trained['fingerprint']}, "
            f"this base's {base['fingerprint']})"
        )
    if slot is not None:
        if adapter["r"] > slot["max_rank"]:
            problems.append(
                f"rank {adapter['r']} does not fit the slot's max rank {slot['max_rank']}"
            )
        if sorted(slot["targets"]) != adapter["targets"]:
            problems.append(
                f"targets {adapter['targets']} are not the slot's {sorted(slot['targets'])}"
            )
    return problems


def choose_version(manifests: list[dict], base: dict, slot: dict | None = None) -> dict:
    """The highest-numbered manifest that is not yanked and fits `base` and `slot` (exercise 10.2).

    Raises IncompatibleAdapterError, saying why each version was refused, if none fits.
    """
    refused = []
    for manifest in sorted(manifests, key=lambda m: m["version"], reverse=True):
        problems = compatibility_problems(manifest, base, slot)
        if manifest.get("yanked"):
            problems = [f"yanked ({manifest['yanked']})", *problems]
        if not problems:
            return manifest
        refused.append(f"v{manifest['version']}: {'; '.join(problems)}")
    name = manifests[0]["name"] if manifests else "the adapter"
    raise IncompatibleAdapterError(
        f"no version of {name} fits this base"
        + (" and slot" if slot else "")
        + (": " + " | ".join(refused) if refused else ": none is published")
        + "."
    )


class AdapterRegistry:
    """Versioned adapters under one folder (notebook 10); the module docstring shows the layout."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def publish(
        self,
        adapter_folder: str | Path,
        name: str,
        base: dict,
        training: dict,
        metrics: dict,
    ) -> Release:
        """Copy an adapter saved by `save_peft_adapter` in as the next version of `name`.

        `base` is the base_record of the model it was trained on (its fingerprint must match
        the one saved with the adapter); `training` says what it learned from (data and recipe
        hashes); `metrics` what it scored at release.
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"adapter name {name!r}: use letters, digits, '_', '.', '-'")
        source = Path(adapter_folder)
        missing = [f for f in ADAPTER_FILES if not (source / f).is_file()]
        if missing:
            raise RegistryError(
                f"{source.name} lacks {', '.join(missing)}: save it with save_peft_adapter first"
            )
        saved = json.loads((source / BASE_FILE).read_text())["fingerprint"]
        if saved != base["fingerprint"]:
            raise AdapterMismatchError(
                f"the adapter was trained on base {saved}, not on the "
                f"base described ({base['fingerprint']})."
            )
        (self.root / name).mkdir(parents=True, exist_ok=True)
        version = 1 + max((v for v, _ in self._version_folders(name)), default=0)
        staging = self.root / name / f".v{version}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            for file in ADAPTER_FILES:
                shutil.copyfile(source / file, staging / file)
            manifest = {
                "name": name,
                "version": version,
                "published": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "base": base,
                "adapter": adapter_record(staging),
                "training": training,
                "metrics": metrics,
                "files": {file: _sha256(staging / file) for file in ADAPTER_FILES},
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            staging.rename(self.root / name / f"v{version}")  # atomic: whole or absent
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.release(name, version)

    def names(self) -> list[str]:
        """The adapters with at least one folder in the registry."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name[0] != ".")

    def releases(self, name: str) -> list[Release]:
        """Every complete version of `name`, oldest first (incomplete ones: `problems`)."""
        found = []
        for version, folder in self._version_folders(name):
            try:
                found.append(self._read(name, version, folder))
            except RegistryError:
                continue
        return found

    def problems(self, name: str) -> dict[int, str]:
        """Version -> why it cannot be used (no manifest, unreadable, files changed)."""
        found = {}
        for version, folder in self._version_folders(name):
            try:
                self.verify(self._read(name, version, folder))
            except RegistryError as error:
                found[version] = str(error)
        return found

    def release(self, name: str, version: int) -> Release:
        """One version of `name`; RegistryError if it is absent or incomplete."""
        return self._read(name, version, self.root / name / f"v{version}")

    def verify(self, release: Release) -> None:
        """RegistryError unless every file the manifest lists is there with its sha256."""
        for file, digest in release.manifest["files"].items():
            path = release.folder / file
            if not path.is_file():
                raise RegistryError(f"{release.name} v{release.version}: {file} is missing")
            if _sha256(path) != digest:
                raise RegistryError(
                    f"{release.name} v{release.version}: {file} does not match its manifest "
                    "(corrupt or changed after publishing); republish it"
                )

    def yank(self, name: str, version: int, reason: str) -> None:
        """Withdraw a version: loaders skip it, so the previous compatible one serves again.

        As with a yanked package on PyPI, asking for the version by number still loads it.
        """
        release = self.release(name, version)
        (release.folder / YANKED).write_text(reason.strip() + "\n")

    def latest_compatible(
        self, name: str, model: nn.Module, tokenizer, model_id: str = "", slot: dict | None = None
    ) -> Release:
        """The newest complete, unyanked version of `name` that fits this base and slot.

        Its files are not read here: `load` verifies them and refuses a corrupt version loudly
        rather than falling back to an older one without anyone noticing.
        """
        releases = self.releases(name)
        if not releases:
            raise RegistryError(f"no complete version of {name!r} in {self.root.name}")
        base = base_record(model, tokenizer, model_id)
        by_version = {r.version: r for r in releases}
        chosen = choose_version([r.manifest for r in releases], base, slot)
        return by_version[chosen["version"]]

    def load(
        self,
        name: str,
        model: nn.Module,
        tokenizer,
        version: int | None = None,
        adapter_name: str | None = None,
        slot: dict | None = None,
    ):
        """Check, then load a version (default: the latest compatible) onto `model` (notebook 10).

        Every check (compatibility, checksums, shapes, fingerprint) runs before PEFT is called,
        so a refused version leaves `model` as it was. Returns the PeftModel; the adapter is
        named `adapter_name` (default "<name>-v<version>").
        """
        from .adapters import load_peft_adapter

        if version is None:
            release = self.latest_compatible(name, model, tokenizer, slot=slot)
        else:
            release = self.release(name, version)
            problems = compatibility_problems(
                release.manifest, base_record(model, tokenizer, ""), slot
            )
            if problems:
                raise IncompatibleAdapterError(f"{name} v{version}: {'; '.join(problems)}.")
        self.verify(release)
        return load_peft_adapter(
            model, release.folder, adapter_name=adapter_name or f"{name}-v{release.version}"
        )

    def _version_folders(self, name: str) -> list[tuple[int, Path]]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [(int(m[1]), p) for p in folder.iterdir() if (m := _VERSION.fullmatch(p.name))]
        return sorted(found)

    def _read(self, name: str, version: int, folder: Path) -> Release:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise RegistryError(f"{name} v{version}: no {MANIFEST} (incomplete)") from None
        except (OSError, ValueError) as error:
            raise RegistryError(f"{name} v{version}: unreadable {MANIFEST} ({error})") from None
        if (manifest.get("name"), manifest.get("version")) != (name, version):
            raise RegistryError(
                f"{name} v{version}: its manifest names "
                f"{manifest.get('name')} v{manifest.get('version')}"
            )
        if (folder / YANKED).is_file():
            manifest = {**manifest, "yanked": (folder / YANKED).read_text().strip() or "yanked"}
        return Release(name, version, folder, manifest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()
