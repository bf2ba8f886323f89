"""The embedded registry: an SQLite index (versions, files, aliases) and content-addressed files under one folder.
A file's content is stored once however many versions hold it. A version becomes visible in one transaction, after
all its files are stored, so an interrupted push leaves no half version; the files it had stored are reclaimed by
the next `delete` (or `gc`), which holds an exclusive lock that pushes share."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path

from edgewise.core.errors import EdgewiseError
from edgewise.core.fsutil import locked
from edgewise.registry.record import check_alias, check_name, describe, pull_into

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (name TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL,
                                     PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS files (name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL,
                                  sha256 TEXT NOT NULL, size INTEGER NOT NULL, PRIMARY KEY (name, version, path));
CREATE TABLE IF NOT EXISTS aliases (name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
                                    PRIMARY KEY (name, alias));
"""


class LocalRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise EdgewiseError(f"registry path {self.root} is a file, not a folder")

    @contextmanager
    def _db(self, write: bool = False):
        # Switching a new index to WAL does not wait on SQLite's busy timeout: two first pushes at once failed with
        # "database is locked". Opening (WAL switch and schema) is therefore one process at a time.
        with self._file_lock("index.lock", exclusive=True):
            db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
            except BaseException:
                db.close()
                raise
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK") if db.in_transaction else None
            raise
        finally:
            db.close()

    def _file_lock(self, name: str, exclusive: bool):
        return locked(self.root / name, shared=not exclusive)

    def _blob_lock(self, exclusive: bool):
        return self._file_lock("blobs.lock", exclusive)

    def _blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def _store_blob(self, src: Path, sha256: str) -> None:
        blob = self._blob(sha256)
        if blob.is_file() and blob.stat().st_size == src.stat().st_size:
            return
        blob.parent.mkdir(parents=True, exist_ok=True)
        tmp = blob.with_name(f".{sha256}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, blob)

    def push(self, folder: Path, name: str, version: int | None = None) -> dict:
        record = {"name": check_name(name), **describe(folder)}
        with self._blob_lock(exclusive=False):
            for entry in record["files"]:
                self._store_blob(Path(folder) / entry["path"], entry["sha256"])
            with self._db(write=True) as db:
                latest = db.execute("SELECT MAX(version) FROM versions WHERE name=?", (name,)).fetchone()[0] or 0
                version = version or latest + 1
                if db.execute("SELECT 1 FROM versions WHERE name=? AND version=?", (name, version)).fetchone():
                    raise EdgewiseError(f"{name}@{version} exists and versions are immutable; omit --version")
                record["version"] = version
                db.execute("INSERT INTO versions VALUES (?, ?, ?)",
                           (name, version, json.dumps({k: v for k, v in record.items() if k != "files"})))
                db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)",
                               [(name, version, f["path"], f["sha256"], f["size"]) for f in record["files"]])
        return {**record, "aliases": []}

    def _resolve(self, db, name: str, ref: str | None) -> int:
        if ref is None:
            version = db.execute("SELECT MAX(version) FROM versions WHERE name=?", (name,)).fetchone()[0]
        elif ref.isdigit():
            row = db.execute("SELECT version FROM versions WHERE name=? AND version=?", (name, int(ref))).fetchone()
            version = row and row[0]
        else:
            row = db.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, ref)).fetchone()
            version = row and row[0]
        if not version:
            raise EdgewiseError(f"no {name}@{ref} in the registry" if ref else f"no model '{name}' in the registry")
        return version

    def _record(self, db, name: str, version: int) -> dict:
        (text,) = db.execute("SELECT record FROM versions WHERE name=? AND version=?", (name, version)).fetchone()
        aliases = [a for (a,) in db.execute("SELECT alias FROM aliases WHERE name=? AND version=? ORDER BY alias",
                                            (name, version))]
        files = [{"path": p, "size": s, "sha256": h} for p, s, h in db.execute(
            "SELECT path, size, sha256 FROM files WHERE name=? AND version=? ORDER BY path", (name, version))]
        return {**json.loads(text), "aliases": aliases, "files": files}

    def show(self, name: str, ref: str | None = None) -> dict:
        with self._db() as db:
            return self._record(db, name, self._resolve(db, name, ref))

    def list(self, name: str | None = None) -> list[dict]:
        with self._db() as db:
            rows = db.execute("SELECT name, version FROM versions WHERE ?1 IS NULL OR name=?1 ORDER BY name, version",
                              (name,)).fetchall()
            if name and not rows:
                raise EdgewiseError(f"no model '{name}' in the registry")
            return [self._record(db, n, v) for n, v in rows]

    def pull(self, name: str, ref: str | None, to: Path) -> tuple[dict, Path]:
        record = self.show(name, ref)

        def fill(tmp: Path) -> None:
            for entry in record["files"]:
                (tmp / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
                blob = self._blob(entry["sha256"])
                if not blob.is_file():
                    raise EdgewiseError(f"{name}@{record['version']}: {entry['path']} is missing from the registry")
                shutil.copyfile(blob, tmp / entry["path"])

        return record, pull_into(to, fill, record)

    def alias(self, name: str, ref: str, alias: str) -> dict:
        check_alias(alias)
        with self._db(write=True) as db:
            version = self._resolve(db, name, ref)
            db.execute("INSERT OR REPLACE INTO aliases VALUES (?, ?, ?)", (name, alias, version))
            return self._record(db, name, version)

    def delete(self, name: str, ref: str | None) -> list[int]:
        """NAME@VERSION deletes that version (and its aliases); NAME alone deletes every version."""
        with self._db(write=True) as db:
            versions = ([self._resolve(db, name, ref)] if ref else
                        [v for (v,) in db.execute("SELECT version FROM versions WHERE name=?", (name,))])
            if not versions:
                raise EdgewiseError(f"no model '{name}' in the registry")
            for table in ("versions", "files", "aliases"):
                db.executemany(f"DELETE FROM {table} WHERE name=? AND version=?", [(name, v) for v in versions])
        self.gc()
        return versions

    def gc(self) -> int:
        """Remove stored files that no version refers to (left by deletes or interrupted pushes)."""
        removed = 0
        with self._blob_lock(exclusive=True):
            with self._db() as db:
                wanted = {h for (h,) in db.execute("SELECT DISTINCT sha256 FROM files")}
            for blob in (self.root / "blobs").glob("*/*"):
                if blob.name not in wanted:  # unreferenced, or the temporary file of a killed push
                    blob.unlink()
                    removed += 1
        return removed
