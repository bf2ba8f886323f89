"""One engine under every command: a command is a list of (pass name, config) steps. Each step's output is cached
under a hash of (input identity, pass, config with data files by fingerprint, library versions), written atomically, so a
repeated command takes seconds and an interrupted chain resumes where it stopped."""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgewise import __version__
from edgewise.fsutil import (MANIFEST, atomic_dir, check_output_path, file_sha256, fingerprint, link_tree,
                             stable_hash)
from edgewise.log import log


@dataclass(frozen=True)
class Pass:
    name: str
    config_cls: type
    fn: Callable[..., dict | None]  # fn(artifact, config, out_dir, work_dir) -> metrics


PASSES: dict[str, Pass] = {}


def register(name: str, config_cls: type):
    """Decorator: make `fn(artifact, config, out_dir, work_dir)` the pass called `name`."""

    def wrap(fn):
        fn.edgewise_plugin = PASSES[name] = Pass(name, config_cls, fn)
        return fn

    return wrap


@dataclass(frozen=True)
class Artifact:
    path: Path
    id: str
    manifest: dict


def cache_root(explicit: str | Path | None = None) -> Path:
    root = explicit or os.environ.get("EDGEWISE_CACHE") or Path.home() / ".cache" / "edgewise"
    return Path(root).expanduser()


def folder_artifact(folder: Path, source: str | None = None) -> Artifact:
    """An input folder: identified by its edgewise manifest when it has one (or its parent has, as for a finetune's
    OUT/model), else by names, sizes and times; `source` names where a folder without a manifest came from."""
    folder = Path(folder)
    for owner, suffix in ((folder, ""), (folder.parent, f"/{folder.name}")):
        if (owner / MANIFEST).is_file():
            manifest = json.loads((owner / MANIFEST).read_text())
            return Artifact(folder, manifest["id"] + suffix, manifest)
    return Artifact(folder, fingerprint(folder), {"source": source or str(folder)})


def lineage_of(artifact: Artifact, name: str, key: str, config, metrics: dict, seconds: float) -> dict:
    """The source model and every step since, carried in each manifest so a folder explains itself anywhere."""
    step = {"pass": name, "id": key, "config": config_dict(config), "metrics": metrics, "seconds": seconds}
    return {"source": artifact.manifest.get("source", str(artifact.path)),
            "lineage": [*artifact.manifest.get("lineage", []), step]}


@functools.cache
def code_hash() -> str:
    """Hash of edgewise's own code and data files: a change to either invalidates cached results."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".txt", ".json", ".jsonl") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def versions() -> dict[str, str]:
    """edgewise (with its code hash) and the library versions that shape results; read once per process."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"edgewise": f"{__version__}+{code_hash()}"}
    for name in ("torch", "transformers", "peft", "onnx", "onnxruntime", "onnxruntime-genai"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def config_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def cache_key(artifact: Artifact, name: str, config) -> str:
    """Files named by the config count by content identity, not by path: moved or linked data hits the cache."""
    values = config_dict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("path") and values[f.name] and Path(values[f.name]).exists():
            values[f.name] = {"fingerprint": fingerprint(Path(values[f.name]))}
    return stable_hash({"input": artifact.id, "pass": name, "config": values, "versions": versions()})


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_table(folder: Path) -> dict[str, list]:
    """[size, sha256] of every file of a pass's output but its manifest: how a corrupted cache entry is caught."""
    return {str(p.relative_to(folder)): [p.stat().st_size, file_sha256(p)]
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name != MANIFEST}


def intact(entry: Path) -> bool:
    recorded = json.loads((entry / MANIFEST).read_text()).get("files")
    sizes_match = recorded is not None and all(
        (entry / name).is_file() and (entry / name).stat().st_size == size for name, (size, _) in recorded.items())
    return sizes_match and file_table(entry) == recorded


def run_pass(name: str, artifact: Artifact, config, cache: Path, checked: bool = False) -> Artifact:
    """Build `name` on `artifact`, or take it from the cache; `checked`: its config's check() already ran."""
    if not checked:
        check_steps([(name, config)])
    key = cache_key(artifact, name, config)
    entry = cache / "runs" / f"{name}-{key[:20]}"
    with _locked(cache / "locks" / f"{key[:20]}.lock"):
        if (entry / MANIFEST).is_file():
            if intact(entry):
                log.info("%s: cached (%s)", name, entry)
                os.utime(entry)
                return folder_artifact(entry)
            log.warning("%s: cache entry %s is corrupted (a file changed or went missing); rebuilding", name, entry)
            shutil.rmtree(entry)
        log.info("%s: running", name)
        start = time.time()
        work = cache / "work" / key[:20]
        work.mkdir(parents=True, exist_ok=True)
        with atomic_dir(entry) as tmp:
            metrics = PASSES[name].fn(artifact, config, tmp, work) or {}
            seconds = round(time.time() - start, 2)
            manifest = {
                "id": key, "pass": name, "config": config_dict(config), "parent": artifact.id,
                "parent_path": str(artifact.path), "versions": versions(), "metrics": metrics, "seconds": seconds,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": file_table(tmp),
                **lineage_of(artifact, name, key, config, metrics, seconds),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        shutil.rmtree(work, ignore_errors=True)  # checkpoints and scratch matter only to an interrupted run
        log.info("%s: done in %.1f s", name, time.time() - start)
        return folder_artifact(entry)


def check_steps(steps: list[tuple[str, Any]]) -> None:
    """A pass config may define check(): cheap validation (values, input files) run for every step before any."""
    for _, config in steps:
        if hasattr(config, "check"):
            config.check()


def run_steps(artifact: Artifact, steps: list[tuple[str, Any]], cache: Path, checked: bool = False) -> Artifact:
    """Every step checked once, before any runs (unless the caller did it), then built in order."""
    if not checked:
        check_steps(steps)
    for name, config in steps:
        artifact = run_pass(name, artifact, config, cache, checked=True)
    return artifact


def publish(artifact: Artifact, output: Path) -> Path:
    """Expose a cache entry at the user's output path as hard links (no second copy on disk)."""
    output = Path(output)
    check_output_path(output)
    with atomic_dir(output) as tmp:
        link_tree(artifact.path, tmp)
    log.info("wrote %s", output)
    return output
