"""Helpers shared by the test files: the CLI as a subprocess, its user-error contract, a server started as a real
process and waited for by its health answer, raw HTTP, output digests. Test files import these instead of each
other's private functions."""
from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from edgewise.core.fsutil import MANIFEST


def edgewise(*args, cwd=None, env=None, timeout=300):
    """The edgewise command line, run as a user runs it; the CompletedProcess, whatever its exit code."""
    return subprocess.run([sys.executable, "-m", "edgewise", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def assert_user_error(done, message, out):
    """A user mistake: exit 2, one `edgewise: error:` line holding `message`, no traceback, nothing at `out`."""
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("edgewise: error:")]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body: bytes | None = None):
    """(status, parsed JSON) of a raw HTTP request, errors included."""
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until_healthy(proc: subprocess.Popen, url: str, log: Path | None = None, limit: float = 600) -> None:
    """Until `url` answers 200: the server's own signal that it is up, however long a loaded machine takes to import
    and load. Fails at once, with its log, if the process ends first; `limit` only bounds a hung start."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: "
                                 + (log.read_text()[-3000:] if log else ""))
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no answer from {url} in {limit:.0f} s")


def start_server(model, adapters, *extra, env=None):
    """`edgewise serve` as a real process on a port the server picks and announces (so parallel tests never race
    for one), once it answers /health; proc.log is its stderr."""
    cmd = [sys.executable, "-m", "edgewise", "serve", str(model), "--port", "0", *extra]
    for name, path in adapters.items():
        cmd += ["--adapter", f"{name}={path}"]
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)  # a file, not a pipe nobody drains
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
    proc.log = Path(log.name)
    url = announced_url(proc, proc.log)
    wait_until_healthy(proc, f"{url}/health", proc.log)
    return proc, url


def announced_url(proc: subprocess.Popen, log: Path, limit: float = 600) -> str:
    """The address `edgewise serve` announces on stderr once it has bound its socket (`serving M on URL/v1`)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if found := re.search(r" on (http://\S+):(\d+)/v1 ", log.read_text()):
            return f"{found[1]}:{found[2]}"
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the server announced no address in {limit:.0f} s")


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of an output but its manifests (they hold timestamps and durations)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def openai_client(url, key="none"):
    """The official OpenAI client on a server started by start_server; no retries, so every error is seen."""
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def reg(root, *args):
    """`edgewise registry ARGS --registry ROOT`."""
    return edgewise("registry", *args, "--registry", str(root))
