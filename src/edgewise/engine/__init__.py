"""The engine: runs pass steps through the content-addressed cache (steps), measures artifacts (evaluate), searches
pass parameters (search, selection), reports (report), and ties them into the one pipeline every command uses."""
from edgewise.core.artifact import Artifact, folder_artifact
from edgewise.engine.cache import cache_root
from edgewise.engine.steps import run_pass, run_steps

__all__ = ["Artifact", "cache_root", "folder_artifact", "run_pass", "run_steps"]
