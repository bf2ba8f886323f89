"""Model registry: push an output folder under a name as an immutable version; list, show, pull (checksums
verified), alias and delete. Backends, chosen by `--registry URI`: the embedded one (SQLite index + content-addressed
files; the default, offline), an MLflow Model Registry (`mlflow:http://host:port`) and the Hugging Face Hub
(`hf://org`). Every backend stores the same record: files with sizes and sha256, the lineage from edgewise.json,
and when and from where the push came."""
from __future__ import annotations

import os
from pathlib import Path

from edgewise.core.errors import EdgewiseError
from edgewise.registry.record import check_alias, check_name, format_list, format_record, parse_ref

__all__ = ["check_alias", "check_name", "default_root", "format_list", "format_record", "open_registry", "parse_ref"]


def default_root() -> Path:
    if os.environ.get("EDGEWISE_REGISTRY"):
        return Path(os.environ["EDGEWISE_REGISTRY"]).expanduser()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "edgewise" / "registry"


def open_registry(uri: str | None = None):
    """`mlflow:http://host:port`, `hf://org`, a folder for the embedded registry, or None for the default folder."""
    if uri and uri.startswith("mlflow:"):
        from edgewise.registry.mlflow_store import MlflowRegistry

        return MlflowRegistry(uri.removeprefix("mlflow:"))
    if uri and uri.startswith("hf://"):
        from edgewise.registry.hub import HubRegistry

        return HubRegistry(uri.removeprefix("hf://"))
    if uri and "://" in uri:
        raise EdgewiseError(f"unknown registry '{uri}': use a folder, mlflow:http://HOST:PORT or hf://ORG")
    from edgewise.registry.local import LocalRegistry

    return LocalRegistry(Path(uri).expanduser() if uri else default_root())
