"""What flows between stages: a folder (a pass's output, or an input model) with its identity and its manifest."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgewise.core.fsutil import MANIFEST, fingerprint


@dataclass(frozen=True)
class Artifact:
    path: Path
    id: str
    manifest: dict


def folder_artifact(folder: Path, source: str | None = None) -> Artifact:
    """An input folder: identified by its edgewise manifest when it has one (or its parent has, as for a finetune's
    OUT/model), else by names, sizes and times; `source` names where a folder without a manifest came from."""
    folder = Path(folder)
    for owner, suffix in ((folder, ""), (folder.parent, f"/{folder.name}")):
        if (owner / MANIFEST).is_file():
            manifest = json.loads((owner / MANIFEST).read_text())
            return Artifact(folder, manifest["id"] + suffix, manifest)
    return Artifact(folder, fingerprint(folder), {"source": source or str(folder)})


# The layout of a finetune output: the base model (hard links) and the PEFT adapter trained on it. An export writes
# its ONNX Runtime GenAI folder to MODEL too.
MODEL, ADAPTER = "model", "adapter"


def model_and_adapter(folder: Path) -> tuple[Path, Path | None]:
    """(base model folder, PEFT adapter) of a finetune output; (folder, None) for any other folder."""
    folder = Path(folder)
    if (folder / MODEL).is_dir() and (folder / ADAPTER).is_dir():
        return folder / MODEL, folder / ADAPTER
    return folder, None
