"""The chat page of `edgewise serve`, in a real browser: headless Chromium (Debian's, installed by `make`) driven by
Playwright against a real server on the tiny Llama with two adapters. The page loads, an answer streams in and
equals the API's own answer, switching the adapter changes it, the split view asks two models at once, stop ends a
stream that is still running, and a wrong API key shows the server's message.

The page is reached through a reverse proxy with a path prefix (`/edge/`), as it is deployed behind nginx or a
notebook's proxy: every URL of the page is relative. The proxy can also hold a streamed answer after its first
event, so that "stop" is clicked while the answer is certainly still running, however fast the machine is."""
import http.client
import http.server
import json
import re
import shutil
import signal
import threading

import pytest
from conftest import RECORDS
from helpers import start_server

from edgewise.runtime.genai import Runtime
from edgewise.runtime.sampling import Sampling

pytest.importorskip("playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here: `make venv` installs Debian's")
QUESTION = RECORDS[0]["prompt"]
PREFIX = "/edge"


class Proxy(http.server.ThreadingHTTPServer):
    """A reverse proxy that serves `upstream` under PREFIX, streaming responses through; while `hold` is set, a
    streamed answer stops at its first event with content (the server keeps generating; the browser sees no more)."""

    daemon_threads = True

    def __init__(self, upstream: str):
        self.upstream, self.hold, self.held = upstream.removeprefix("http://"), threading.Event(), threading.Event()
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Forward)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{PREFIX}/"


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _forward(self):
        if not self.path.startswith(PREFIX + "/"):
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=600)
        keep = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization", "accept")}
        upstream.request(self.command, self.path[len(PREFIX):], body or None, keep)
        answer = upstream.getresponse()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            while chunk := answer.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                if self.server.hold.is_set() and re.search(rb'"content": "[^"]', chunk):
                    self.server.held.set()
                    self.server.release.wait(600)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the browser went away (stop): so does the upstream request
            pass
        finally:
            upstream.close()

    do_GET = do_POST = _forward


@pytest.fixture(scope="module")
def expected(tiny_onnx):
    runtime = Runtime(tiny_onnx.model, tiny_onnx.adapters)
    answers = {a: runtime.generate(QUESTION, a, Sampling(max_new_tokens=12)) for a in (None, "one", "two")}
    return {**answers, "long": runtime.generate(QUESTION, None, Sampling(max_new_tokens=200))}


def _serve(tiny_onnx, *extra):
    proc, url = start_server(tiny_onnx.model, tiny_onnx.adapters, *extra)
    proxy = Proxy(url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proc, proxy


def _stop(proc, proxy):
    proxy.release.set()
    proxy.shutdown()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def server(tiny_onnx):
    proc, proxy = _serve(tiny_onnx)
    yield proxy
    _stop(proc, proxy)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.goto(server.url)
    page.wait_for_selector("#status:has-text('ready')")
    page.click("#settings-button")
    page.fill("#temperature", "0")  # greedy: the page's answers are the API's
    page.fill("#max_tokens", "12")
    yield page
    assert page.errors == []
    context.close()


def ask(page, question=QUESTION):
    page.fill("#question", question)
    page.click("#send")


def last_answer(page, pane=0, state="done"):
    item = page.locator(f".pane[data-pane='{pane}'] li.assistant").last
    item.and_(page.locator(f"[data-state='{state}']")).wait_for()
    return item.locator(".text").inner_text()


def test_the_page_streams_the_apis_answer_and_keeps_the_conversation(page, expected):
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        ask(page)
    assert sent.value.headers["content-type"].startswith("text/event-stream")
    assert json.loads(sent.value.request.post_data)["stream"] is True
    assert page.locator(".pane[data-pane='0'] .model option").all_inner_texts() == ["base", "one", "two"]
    assert last_answer(page) == expected[None]
    ask(page, "And then?")  # the second turn carries the first (the server sees the whole conversation)
    last_answer(page)
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as again:
        ask(page, "And after that?")
    messages = json.loads(again.value.post_data)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == expected[None]


def test_switching_the_adapter_changes_the_answer(page, expected):
    page.select_option(".pane[data-pane='0'] .model", "one")
    ask(page)
    assert last_answer(page) == expected["one"] != expected[None]


def test_the_split_view_asks_two_models_at_once(page, expected):
    page.check("#compare")
    page.select_option(".pane[data-pane='0'] .model", "base")
    page.select_option(".pane[data-pane='1'] .model", "two")
    ask(page)
    assert (last_answer(page, 0), last_answer(page, 1)) == (expected[None], expected["two"])


def test_stop_ends_a_running_stream(page, server, expected):
    page.fill("#max_tokens", "200")
    server.release.clear()
    server.hold.set()  # the answer is held after its first words: it is still running when stop is clicked
    try:
        ask(page)
        assert server.held.wait(120), "no streamed content reached the proxy"
        page.wait_for_function("document.querySelector('li.assistant[data-state=streaming] .text').textContent")
        page.click("#stop")
        shown = last_answer(page, state="stopped")
    finally:
        server.hold.clear()
        server.release.set()
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    assert "stopped" in page.locator("li.assistant").last.inner_text()
    assert shown and expected["long"].startswith(shown) and len(shown) < len(expected["long"])


def test_a_wrong_api_key_shows_the_servers_message(browser, tiny_onnx):
    proc, proxy = _serve(tiny_onnx, "--api_key", "s3cret")
    try:
        page = browser.new_page()
        page.goto(proxy.url)
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#key", "wrong")
        page.click("#key-form button")
        page.wait_for_selector("#key-error:has-text('invalid or missing API key')")
        page.fill("#key", "s3cret")
        page.click("#key-form button")
        page.wait_for_selector("#status:has-text('ready')")
        assert page.is_hidden("#key-form")
        page.close()
    finally:
        _stop(proc, proxy)
