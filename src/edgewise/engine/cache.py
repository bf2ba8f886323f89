"""`edgewise cache ls|prune`: the cache's pass outputs with their size and last use; prune evicts the least recently
used until the cache fits a size. Files hard-linked between entries (a finetune's base model) count once."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path

from edgewise.core.errors import EdgewiseError
from edgewise.core.fsutil import MANIFEST, locked

UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12}


def cache_root(explicit: str | Path | None = None) -> Path:
    root = explicit or os.environ.get("EDGEWISE_CACHE") or Path.home() / ".cache" / "edgewise"
    return Path(root).expanduser()


def parse_size(text: str) -> int:
    found = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?B?)\s*", text.upper())
    if not found:
        raise EdgewiseError(f"size '{text}': use a number with an optional unit, e.g. 500M or 10G")
    return int(float(found[1]) * UNITS[found[2]])


def entries(cache: Path) -> list[dict]:
    """Pass outputs and converted sources, least recently used first; each file's bytes counted once."""
    found = []
    for kind in ("runs", "sources"):
        for folder in sorted((cache / kind).glob("*")) if (cache / kind).is_dir() else []:
            if folder.is_dir() and not folder.name.startswith("."):
                manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
                found.append({"path": folder, "kind": kind, "pass": manifest.get("pass", "source"),
                              "last_used": folder.stat().st_mtime, "created": manifest.get("created", "")})
    found.sort(key=lambda e: e["last_used"])
    seen: set = set()
    for entry in found:
        entry["bytes"] = 0
        for path in entry["path"].rglob("*"):
            st = path.stat()
            if path.is_file() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                entry["bytes"] += st.st_size
    return found


def _lock_file(cache: Path, name: str) -> Path:
    """The engine's lock of the entry NAME-KEY (or a source folder named by its hash)."""
    return cache / "locks" / f"{name.rsplit('-', 1)[-1]}.lock"


def sweep_leftovers(cache: Path) -> int:
    """Remove the temporary folders of killed runs (`.NAME-KEY.tmp-*`, `.NAME-KEY.old-*`) whose lock no run holds."""
    removed = 0
    for tmp in sorted((cache / "runs").glob(".*-*.*-*")) if (cache / "runs").is_dir() else []:
        lock = _lock_file(cache, tmp.name[1:].rsplit(".", 1)[0])
        lock.parent.mkdir(exist_ok=True)
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a run is writing it now
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed


def prune(cache: Path, max_bytes: int) -> list[dict]:
    """Evict least recently used entries until the total fits `max_bytes`; leftovers of killed runs go first."""
    sweep_leftovers(cache)
    found, evicted = entries(cache), []
    total = sum(e["bytes"] for e in found)
    for entry in found:
        if total <= max_bytes:
            break
        with locked(_lock_file(cache, entry["path"].name)):  # not while a run writes it
            shutil.rmtree(entry["path"])
        total -= entry["bytes"]
        evicted.append(entry)
    return evicted


def describe(entry: dict) -> dict:
    return {"path": str(entry["path"]), "pass": entry["pass"], "size_mb": round(entry["bytes"] / 1e6, 1),
            "last_used": time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["last_used"])),
            "created": entry["created"]}
