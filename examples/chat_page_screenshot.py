"""README's screenshot of the chat page: the lab chain on the embedded default model (the demo's configs, so a
previous `make demo` is reused from the cache), served with its travel adapter, one question asked of the base
model and of the adapter side by side, in headless Chromium.

Usage: python examples/chat_page_screenshot.py [docs/chat-page.png]"""
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from edgewise import engine
from edgewise.passes.export import ExportConfig
from edgewise.passes.finetune import FinetuneConfig
from edgewise.passes.quantize import QuantizeConfig
from edgewise.sources import model as sources

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "I have three days in Lisbon in May. What should I see?"


def lab_export(cache: Path) -> Path:
    base = engine.folder_artifact(sources.resolve(None, cache))
    awq = engine.run_pass("quantize", base, QuantizeConfig(), cache)
    ft = engine.run_pass("finetune", awq, FinetuneConfig(data_files=str(ROOT / "examples" / "travel.jsonl")), cache)
    return engine.run_pass("export", engine.folder_artifact(ft.path / "model"),
                           ExportConfig(adapter_path=str(ft.path / "adapter")), cache).path / "model"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "chat-page.png")
    model = lab_export(engine.cache_root())
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    server = subprocess.Popen([sys.executable, "-m", "edgewise", "serve", str(model), "--port", "0", "--adapter",
                               f"travel={model / 'adapter_weights.onnx_adapter'}"], stderr=log, text=True)
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import announced_url, wait_until_healthy

        url = announced_url(server, Path(log.name))
        wait_until_healthy(server, f"{url}/health")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(f"{url}/")
            page.wait_for_selector("#status:has-text('ready')")
            page.check("#compare")
            page.select_option(".pane[data-pane='0'] .model", "base")
            page.select_option(".pane[data-pane='1'] .model", "travel")
            page.click("#settings-button")
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "120")
            page.click("#settings-button")
            page.fill("#question", QUESTION)
            page.click("#send")
            for pane in (0, 1):
                page.wait_for_selector(f".pane[data-pane='{pane}'] li.assistant[data-state='done']")
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    print(out)


if __name__ == "__main__":
    main()
