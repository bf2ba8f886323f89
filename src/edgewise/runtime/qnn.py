"""onnxruntime's QNN execution provider (the `onnxruntime-qnn` plugin): registering it with onnxruntime and
onnxruntime-genai, its provider options, and compiling a graph for HTP into an EPContext model (the .onnx that
names it and the context binary, .bin, that the chip loads). On x86 Linux the wheel's HTP backend simulates the NPU
(correct numbers, slow) and compiles context binaries for the real chip."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import sys
import time
from pathlib import Path

from edgewise.core.errors import EdgewiseError
from edgewise.core.log import log

EP = "QNNExecutionProvider"
PACKAGE = "onnxruntime-qnn (with onnxruntime >= 1.24.2)"


def _plugin():
    try:
        import onnxruntime_qnn
    except ImportError as exc:
        raise EdgewiseError(f"the NPU target needs {PACKAGE}: pip install onnxruntime-qnn") from exc
    return onnxruntime_qnn


def available() -> bool:
    try:
        _plugin()
    except EdgewiseError:
        return False
    return True


@functools.cache
def register_ort() -> list:
    """Register the plugin with onnxruntime (once per process); its devices."""
    import onnxruntime as ort

    plugin = _plugin()
    ort.register_execution_provider_library(EP, plugin.get_library_path())
    return [d for d in ort.get_ep_devices() if d.ep_name == EP]


@functools.cache
def register_genai() -> None:
    import onnxruntime_genai as og

    og.register_execution_provider_library(EP, _plugin().get_library_path())


@contextlib.contextmanager
def quiet_stdout():
    """The HTP backend prints a banner on stdout when it first loads; stdout is the data channel (--json), so native
    output goes to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def runtime_options(soc_model: int, htp_arch: int) -> dict[str, str]:
    """What a session of the compiled model needs (recorded in genai_config.json): the HTP backend by type (the
    plugin finds its own libQnnHtp.so or QnnHtp.dll), the chip, and fp16 math for float tensors."""
    return {"backend_type": "htp", "htp_performance_mode": "burst", "soc_model": str(soc_model),
            "htp_arch": str(htp_arch), "enable_htp_fp16_precision": "1"}


def _session_options(options: dict[str, str], config: dict[str, str]):
    import onnxruntime as ort

    devices = register_ort()
    session = ort.SessionOptions()
    session.log_severity_level = 3
    for key, value in config.items():
        session.add_session_config_entry(key, value)
    session.add_provider_for_devices(devices, options)
    return session


def compile_for_htp(src: Path, out: Path, options: dict[str, str], work: Path) -> dict:
    """Compile `src` for HTP into the EPContext model `out` (and its .bin beside it). Every node must land on HTP:
    CPU fallback is disabled, so an operator HTP lacks fails here with the runtime's list of them."""
    import onnxruntime as ort

    affinity = work / "op_affinity.json"  # GroupQueryAttention runs on HTP only where this option allows it
    affinity.write_text(json.dumps({"op_type": {"GroupQueryAttention": "htp"}}))
    config = {"session.disable_cpu_ep_fallback": "1", "ep.context_enable": "1", "ep.context_embed_mode": "0",
              "ep.context_file_path": str(out)}
    for old in (out, *out.parent.glob(f"{out.stem}*.bin")):  # onnxruntime refuses to overwrite an EPContext model
        old.unlink(missing_ok=True)
    start = time.monotonic()
    try:
        with quiet_stdout():
            ort.InferenceSession(str(src), _session_options({**options, "op_affinity": str(affinity)}, config))
    except Exception as exc:  # onnxruntime reports the unsupported nodes in its log, the failure as Fail
        text = str(exc).strip().splitlines()[0]
        raise EdgewiseError(f"{src.name} does not compile for HTP: {text}") from exc
    binaries = sorted(out.parent.glob(f"{out.stem}*.bin"))
    seconds = time.monotonic() - start
    log.info("compiled %s for HTP in %.1f s (%s)", src.name, seconds,
             ", ".join(f"{b.name} {b.stat().st_size / 2**20:.1f} MiB" for b in binaries))
    return {"seconds": round(seconds, 2), "binaries": {b.name: b.stat().st_size for b in binaries}}


def session(path: Path, options: dict[str, str]):
    """An onnxruntime session of a compiled (EPContext) model on HTP."""
    import onnxruntime as ort

    with quiet_stdout():
        return ort.InferenceSession(str(path), _session_options(options, {"session.disable_cpu_ep_fallback": "1"}))
