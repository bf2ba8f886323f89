"""The Hugging Face Hub as the backend: `hf://ORG` keeps model NAME in the repository ORG/NAME (`hf://ORG/REPO`
names the repository outright). A version is a commit tagged `vN` that holds the folder and edgewise's record
(`edgewise_registry.json`); an alias is a tag pointing at the same commit. Needs the network and a login."""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
from pathlib import Path

from edgewise.core.errors import EdgewiseError
from edgewise.registry.record import check_alias, check_name, describe, pull_into

RECORD = "edgewise_registry.json"


def _hub_errors(method):
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            raise EdgewiseError("the Hugging Face Hub registry needs the network, and HF_HUB_OFFLINE is set")
        try:
            return method(self, *args, **kwargs)
        except RepositoryNotFoundError as exc:
            raise EdgewiseError(f"no repository {exc.response.url if exc.response else ''} on the Hub "
                                "(or it needs a login: hf auth login)") from exc
        except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
            raise EdgewiseError(f"the Hugging Face Hub is unreachable: {str(exc).splitlines()[0]}") from exc

    return wrapped


class HubRegistry:
    def __init__(self, target: str):
        self.target = target.strip("/")
        if not self.target:
            raise EdgewiseError("hf:// needs an organisation or user: hf://ORG")

    def _repo(self, name: str) -> str:
        return self.target if "/" in self.target else f"{self.target}/{check_name(name)}"

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi()

    def _tags(self, name: str) -> dict[str, str]:
        return {t.name: t.target_commit for t in self._api().list_repo_refs(self._repo(name)).tags}

    def _version_tags(self, name: str) -> dict[int, str]:
        return {int(t[1:]): c for t, c in self._tags(name).items() if re.fullmatch(r"v\d+", t)}

    def _resolve(self, name: str, ref: str | None) -> int:
        tags, versions = self._tags(name), self._version_tags(name)
        if not versions:
            raise EdgewiseError(f"no versions of '{name}' in {self._repo(name)}")
        if ref is None:
            return max(versions)
        if ref.isdigit() and int(ref) in versions:
            return int(ref)
        found = [v for v, commit in versions.items() if tags.get(ref) == commit]
        if not found:
            raise EdgewiseError(f"no {name}@{ref} in {self._repo(name)}")
        return found[0]

    def _record(self, name: str, version: int) -> dict:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(self._repo(name), RECORD, revision=f"v{version}")
        commit = self._version_tags(name)[version]
        aliases = sorted(t for t, c in self._tags(name).items() if c == commit and not re.fullmatch(r"v\d+", t))
        return {**json.loads(Path(path).read_text()), "name": name, "version": version, "aliases": aliases}

    @_hub_errors
    def push(self, folder: Path, name: str, version: int | None = None) -> dict:
        from huggingface_hub import CommitOperationAdd

        api, repo = self._api(), self._repo(name)
        record = {"name": name, **describe(folder)}
        api.create_repo(repo, exist_ok=True, private=True)
        latest = max(self._version_tags(name), default=0)
        if version and version <= latest:
            raise EdgewiseError(f"{name}@{version} exists and versions are immutable; omit --version")
        record["version"] = version or latest + 1
        ops = [CommitOperationAdd(f["path"], str(Path(folder) / f["path"])) for f in record["files"]]
        ops.append(CommitOperationAdd(RECORD, json.dumps(record, indent=2).encode()))
        commit = api.create_commit(repo, ops, commit_message=f"edgewise: {name} v{record['version']}")
        api.create_tag(repo, tag=f"v{record['version']}", revision=commit.oid)
        return {**record, "aliases": []}

    @_hub_errors
    def show(self, name: str, ref: str | None = None) -> dict:
        return self._record(name, self._resolve(name, ref))

    @_hub_errors
    def list(self, name: str | None = None) -> list[dict]:
        if not name and "/" not in self.target:
            raise EdgewiseError("on the Hub, list one model: edgewise registry list NAME --registry hf://ORG")
        name = name or self.target.rsplit("/", 1)[1]
        return [self._record(name, v) for v in sorted(self._version_tags(name))]

    @_hub_errors
    def pull(self, name: str, ref: str | None, to: Path) -> tuple[dict, Path]:
        from huggingface_hub import snapshot_download

        record = self.show(name, ref)

        def fill(tmp: Path) -> None:
            snapshot_download(self._repo(name), revision=f"v{record['version']}", local_dir=tmp,
                              allow_patterns=[f["path"] for f in record["files"]])
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # the download's bookkeeping, not the model's

        return record, pull_into(to, fill, record)

    @_hub_errors
    def alias(self, name: str, ref: str, alias: str) -> dict:
        api, version = self._api(), self._resolve(name, ref)
        if check_alias(alias) in self._tags(name):
            api.delete_tag(self._repo(name), tag=alias)
        api.create_tag(self._repo(name), tag=alias, revision=f"v{version}")
        return self.show(name, alias)

    @_hub_errors
    def delete(self, name: str, ref: str | None) -> list[int]:
        """The Hub keeps history: a deleted version's tag (and its aliases) go; NAME alone deletes the repository."""
        api = self._api()
        if ref is None:
            versions = sorted(self._version_tags(name))
            api.delete_repo(self._repo(name))
            return versions
        version = self._resolve(name, ref)
        commit = self._version_tags(name)[version]
        for tag, target in self._tags(name).items():
            if target == commit:
                api.delete_tag(self._repo(name), tag=tag)
        return [version]
