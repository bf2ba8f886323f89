"""What every backend stores for a version: names checked, the record of a folder (files with sizes and sha256,
lineage), checksum verification on pull, and the text views of records."""
from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

from edgewise.core.errors import EdgewiseError
from edgewise.core.fsutil import MANIFEST, file_sha256, stable_hash

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str, what: str = "model name") -> str:
    if not _NAME.match(name or ""):
        raise EdgewiseError(f"invalid {what} '{name}': use letters, digits, '.', '_' and '-' (at most 100)")
    return name


def parse_ref(text: str) -> tuple[str, str | None]:
    """NAME, NAME@VERSION or NAME@ALIAS -> (name, ref); no ref means the latest version."""
    name, _, ref = text.partition("@")
    check_name(name)
    if "@" in text and not ref:
        raise EdgewiseError(f"'{text}': give NAME, NAME@VERSION or NAME@ALIAS")
    return name, ref or None


def check_alias(alias: str) -> str:
    check_name(alias, "alias")
    if alias.isdigit() or alias == "latest":
        raise EdgewiseError(f"alias '{alias}' would read as a version; choose a word such as 'production'")
    return alias


def describe(folder: Path) -> dict:
    """What a push records: every file (size, sha256), a digest of them, and the folder's lineage."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgewiseError(f"nothing to push: {folder} is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    if not paths:
        raise EdgewiseError(f"nothing to push: {folder} is empty")
    files = [{"path": str(p.relative_to(folder)), "size": p.stat().st_size, "sha256": file_sha256(p)} for p in paths]
    manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    return {
        "digest": stable_hash([(f["path"], f["sha256"]) for f in files])[:16],
        "size": sum(f["size"] for f in files),
        "files": files,
        "source": manifest.get("source"),
        "lineage": manifest.get("lineage", []),
        "versions": manifest.get("versions", {}),
        "pushed_from": f"{socket.gethostname()}:{folder.resolve()}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def verify(folder: Path, files: list[dict], label: str) -> None:
    """Every recorded file is there with its checksum; a mismatch is an error, never a silent success."""
    for entry in files:
        path = Path(folder) / entry["path"]
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            raise EdgewiseError(f"{label}: {entry['path']} does not match its recorded sha256 (corrupted copy)")


def pull_into(to: Path, fill, record: dict) -> Path:
    """Write a version into `to` atomically: `fill(tmp)` copies the files, then every checksum is verified."""
    from edgewise.core.fsutil import atomic_dir, check_output_path

    to = Path(to)
    check_output_path(to)
    with atomic_dir(to) as tmp:
        fill(tmp)
        verify(tmp, record["files"], f"{record['name']}@{record['version']}")
    return to


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_list(records: list[dict]) -> str:
    lines = [f"{'name':<24}{'version':>8}  {'aliases':<16}{'size':>10}{'files':>7}  {'digest':<18}created"]
    for r in records:
        lines.append(f"{r['name']:<24}{r['version']:>8}  {','.join(r['aliases']) or '-':<16}{_size(r['size']):>10}"
                     f"{len(r['files']):>7}  {r['digest']:<18}{r['created']}")
    return "\n".join(lines)


def format_record(r: dict) -> str:
    lines = [f"{r['name']}@{r['version']}" + (f"  ({', '.join(r['aliases'])})" if r["aliases"] else ""),
             f"  pushed   {r['created']} from {r['pushed_from']}",
             f"  digest   {r['digest']}   {_size(r['size'])} in {len(r['files'])} files",
             f"  source   {r.get('source') or '(unknown)'}"]
    for step in r.get("lineage", []):
        config = {k: v for k, v in step["config"].items() if v not in (None, "", [], {})}
        lines.append(f"  {step['pass']:<8} {json.dumps(config, default=str)}")
        if step.get("metrics"):
            lines.append(f"  {'':<8} metrics {json.dumps(step['metrics'], default=str)}")
    lines.append("  files")
    lines += [f"    {f['sha256'][:16]}  {_size(f['size']):>10}  {f['path']}" for f in r["files"]]
    return "\n".join(lines)
