"""Running pass steps: a chain is a list of (pass name, config) steps. Each step's output is cached
under a hash of (input identity, pass, config with data files by fingerprint, library versions), written atomically, so a
repeated command takes seconds and an interrupted chain resumes where it stopped."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgewise import __version__
from edgewise.core.artifact import Artifact, folder_artifact
from edgewise.core.fsutil import MANIFEST, atomic_dir, file_sha256, fingerprint, locked, stable_hash
from edgewise.core.log import log
from edgewise.passes import PASSES


def lineage_of(artifact: Artifact, name: str, key: str, config, metrics: dict, seconds: float) -> dict:
    """The source model and every step since, carried in each manifest so a folder explains itself anywhere."""
    step = {"pass": name, "id": key, "config": config_dict(config), "metrics": metrics, "seconds": seconds}
    return {"source": artifact.manifest.get("source", str(artifact.path)),
            "lineage": [*artifact.manifest.get("lineage", []), step]}


@functools.cache
def code_hash() -> str:
    """Hash of edgewise's own code and data files: a change to either invalidates cached results."""
    root = Path(__file__).parents[1]
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
    with locked(cache / "locks" / f"{key[:20]}.lock"):
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
            metrics = _pass(name).fn(artifact, config, tmp, work) or {}
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


def _pass(name: str):
    from edgewise.engine.plugins import load_all

    load_all()  # built-in and third-party passes alike come from entry points
    return PASSES.lookup(name)


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
