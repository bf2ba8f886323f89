"""The engine: runs pass steps through the content-addressed cache (steps), measures artifacts (evaluate), searches
pass parameters (search, selection), reports (report), and ties them into the one pipeline every command uses."""
from edgewise.core.artifact import Artifact, folder_artifact  # noqa: F401
from edgewise.engine.cache import cache_root  # noqa: F401
from edgewise.engine.steps import run_pass, run_steps  # noqa: F401
