"""An MLflow Model Registry as the backend: each push is an MLflow run holding the folder as its `model` artifact
and edgewise's record (files, checksums, lineage) as `edgewise_registry.json`; the registered model version points
at the run. MLflow assigns the version numbers; aliases are MLflow's own."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from edgewise.core.errors import EdgewiseError
from edgewise.registry.record import check_alias, check_name, describe, pull_into

EXPERIMENT = "edgewise-registry"
RECORD = "edgewise_registry.json"


def _mlflow_errors(method):
    """MLflow's exceptions (and connection failures) become one clear line."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links on stdout; ours is for data
                return method(self, *args, **kwargs)
        except MlflowException as exc:
            message = str(exc).splitlines()[0]
            if "Max retries" in message or "Connection" in message:
                raise EdgewiseError(f"cannot reach the MLflow server at {self.uri}") from exc
            raise EdgewiseError(f"MLflow ({self.uri}): {message}") from exc

    return wrapped


class MlflowRegistry:
    def __init__(self, uri: str):
        # Fail in seconds, not after MLflow's default minutes of retries, when the server is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _versions(self, name: str) -> list:
        return sorted(self.client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))

    def _resolve(self, name: str, ref: str | None):
        versions = self._versions(name)
        if not versions:
            raise EdgewiseError(f"no model '{name}' in the MLflow registry at {self.uri}")
        if ref is None:
            return versions[-1]
        number = ref if ref.isdigit() else self._aliases(name).get(ref)
        found = [v for v in versions if v.version == number]
        if not found:
            raise EdgewiseError(f"no {name}@{ref} in the MLflow registry at {self.uri}")
        return found[0]

    def _aliases(self, name: str) -> dict[str, str]:
        return dict(self.client.get_registered_model(name).aliases or {})

    def _record(self, mv) -> dict:
        record = self.client.download_artifacts(mv.run_id, RECORD, tempfile.mkdtemp(prefix="edgewise-"))
        body = json.loads(Path(record).read_text())
        shutil.rmtree(Path(record).parent, ignore_errors=True)
        return {**body, "name": mv.name, "version": int(mv.version), "aliases": sorted(a for a, v in self._aliases(mv.name).items() if v == mv.version)}

    @_mlflow_errors
    def push(self, folder: Path, name: str, version: int | None = None) -> dict:
        record = {"name": check_name(name), **describe(folder)}
        existing = self._versions(name)
        latest = int(existing[-1].version) if existing else 0
        if version and version != latest + 1:
            raise EdgewiseError(f"MLflow numbers versions itself: the next {name} is {latest + 1}; omit --version")
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        run = self.client.create_run(experiment_id, run_name=f"push {name}", tags={"edgewise.name": name})
        self.client.log_artifacts(run.info.run_id, str(folder), "model")
        self.client.log_dict(run.info.run_id, record, RECORD)
        self.client.set_terminated(run.info.run_id)
        if not self.client.search_registered_models(f"name='{name}'"):
            self.client.create_registered_model(name)
        mv = self.client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                              tags={"edgewise.digest": record["digest"]})
        return {**record, "version": int(mv.version), "aliases": []}

    @_mlflow_errors
    def show(self, name: str, ref: str | None = None) -> dict:
        return self._record(self._resolve(name, ref))

    @_mlflow_errors
    def list(self, name: str | None = None) -> list[dict]:
        names = [name] if name else sorted(m.name for m in self.client.search_registered_models())
        records = [self._record(mv) for n in names for mv in self._versions(n)]
        if name and not records:
            raise EdgewiseError(f"no model '{name}' in the MLflow registry at {self.uri}")
        return records

    @_mlflow_errors
    def pull(self, name: str, ref: str | None, to: Path) -> tuple[dict, Path]:
        mv = self._resolve(name, ref)
        record = self._record(mv)

        def fill(tmp: Path) -> None:
            scratch = Path(tempfile.mkdtemp(prefix="edgewise-", dir=tmp.parent))
            try:
                got = Path(self.client.download_artifacts(mv.run_id, "model", str(scratch)))
                for item in got.iterdir():
                    shutil.move(str(item), tmp / item.name)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

        return record, pull_into(to, fill, record)

    @_mlflow_errors
    def alias(self, name: str, ref: str, alias: str) -> dict:
        mv = self._resolve(name, ref)
        self.client.set_registered_model_alias(name, check_alias(alias), mv.version)
        return self.show(name, alias)

    @_mlflow_errors
    def delete(self, name: str, ref: str | None) -> list[int]:
        if ref:
            mv = self._resolve(name, ref)
            self.client.delete_model_version(name, mv.version)
            return [int(mv.version)]
        versions = [int(v.version) for v in self._versions(name)]
        if not versions:
            raise EdgewiseError(f"no model '{name}' in the MLflow registry at {self.uri}")
        self.client.delete_registered_model(name)
        return versions
