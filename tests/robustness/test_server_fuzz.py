"""Schema-driven fuzzing of the OpenAI-compatible server: schemathesis reads the running server's own OpenAPI
document and sends generated requests to every operation, valid and invalid ones; no answer is a 5xx, the process
never dies, and it still answers a plain request afterwards."""
import signal

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from ledger import record
from schemathesis import GenerationMode
from helpers import http, start_server


@pytest.fixture(scope="module")
def server(tiny_onnx):
    proc, url = start_server(tiny_onnx.model, tiny_onnx.adapters)
    yield proc, url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def operations(url):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode,known_model", [(GenerationMode.POSITIVE, True), (GenerationMode.POSITIVE, False),
                                              (GenerationMode.NEGATIVE, False)],
                         ids=["valid-loaded-model", "valid", "invalid"])
def test_no_5xx_and_no_crash(server, mode, known_model):
    """With `known_model`, each generated body names a loaded model (base or an adapter), so that generation runs
    with every generated sampling option; otherwise the `model` field is as generated too (mostly unknown: 404)."""
    proc, url = server
    seen = {}
    for operation in operations(url):
        statuses = seen.setdefault(f"{operation.method.upper()} {operation.path}", {})

        @settings(max_examples=100, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode), model=st.sampled_from(["base", "one", "two"]))
        def fuzz(case, model):
            if known_model and isinstance(case.body, dict):
                case.body["model"] = model
            response = case.call(base_url=url, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.body, response.text[:500])

        try:
            fuzz()
        except Unsatisfiable:  # an operation without parameters or body has no invalid form
            assert mode == GenerationMode.NEGATIVE and not statuses
    alive = proc.poll() is None and http("GET", f"{url}/health")[0] == 200
    assert "Traceback" not in proc.log.read_text(), proc.log.read_text()[-3000:]
    errors = sum(n for codes in seen.values() for code, n in codes.items() if code >= 500)
    record("server fuzzing", f"{mode.value} requests{', loaded models' if known_model else ''}, every operation", "pass" if alive and not errors else "FAIL",
           requests=sum(sum(c.values()) for c in seen.values()), operations=len(seen), status_5xx=errors,
           statuses={op: dict(sorted(c.items())) for op, c in seen.items()})
    assert alive, "the server must survive the fuzzing"
    assert len(seen) >= 4
