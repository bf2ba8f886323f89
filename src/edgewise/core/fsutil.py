"""Folder operations: fingerprints, atomic writes, and publishing cache entries as hard links instead of copies."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from edgewise.core.errors import EdgewiseError


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """Cheap identity of a user file or folder: names, sizes and modification times."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    items = [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link files (no second copy on disk), falling back to a copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        try:
            shutil.copy2(src, dst)
        except OSError as exc:  # name the file being written (a full disk is the destination's), not the source
            raise OSError(exc.errno, exc.strerror, str(dst)) from exc


def link_tree(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    for path in sorted(Path(src).rglob("*")):
        if path.name in skip:
            continue
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            link_or_copy(path, target)


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling folder; on success it replaces `final`, on failure it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


MANIFEST = "edgewise.json"


def check_output_path(path: Path) -> None:
    """An output path may be new, empty, or an earlier edgewise output; anything else is the user's and is kept."""
    path = Path(path)
    if path.is_file():
        raise EdgewiseError(f"output path {path} is a file")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise EdgewiseError(f"output path {path} already holds files that edgewise did not write; choose another")


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def locked(path: Path, shared: bool = False):
    """A lock on `path` (created if needed) for the duration of the block: exclusive, or shared with other readers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
