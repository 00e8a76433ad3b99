"""The exported report opened in a real headless browser (Debian's ``chromium``).

Chromium is driven over the DevTools protocol (``websocket-client``, a Jupyter dependency): every
page of a report is loaded from disk, JavaScript exceptions and console errors are collected, the
headline table's on-screen box is measured and a screenshot is written next to the report.

Set-up: the browser is a system package, installed by the test set-up, not by a test: CI's
``.ci/run`` installs Debian's ``chromium`` with apt-get before ``make test``. When no ``chromium``
is on ``PATH`` these tests skip and say how to install it. The report comes from a
run of stand-in notebooks (``test_pipeline._dummy_notebooks``) through the real export path; when
``SAMSTUDY_REPORT`` names an ``index.html`` (e.g. of ``make study``), that report is checked too.
The study's own report (``configs/tiny.yaml``, fixture ``tiny_run`` of ``test_pipeline``) is checked
as well; when both modules run, the second use finds every stage unchanged and skips it.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from test_pipeline import _dummy_notebooks, _run, _write_config, tiny_run  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the chromium binary; skips when it is not installed (tests never install it)."""
    exe = _find_chromium()
    if exe is None:
        pytest.skip("chromium not found on PATH: install Debian's 'chromium' package "
                    "(as root: apt-get install -y chromium; .ci/run does this in CI)")
    return exe


class Browser:
    """A headless chromium process and one DevTools websocket to its first page."""

    def __init__(self, exe: str, profile: Path):
        import urllib.request

        import websocket  # websocket-client

        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def load(self, url: str, timeout: float = 60) -> None:
        """Navigate and wait for the load event."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading")
            self.events.append(json.loads(self.ws.recv()))

    def errors(self) -> list[str]:
        """JavaScript exceptions, console errors and browser log errors seen since the last load."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(p["exceptionDetails"].get("exception", {}).get("description")
                           or p["exceptionDetails"].get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluation failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture()
def browser(chromium, tmp_path):
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    b = Browser(chromium, profile)
    yield b
    b.close()


_HEADLINE_BOX = """(() => {
  const t = document.querySelector('#headline table');
  if (!t) return null;
  const r = t.getBoundingClientRect(), s = getComputedStyle(t);
  return {width: r.width, height: r.height, top: r.top, display: s.display, visibility: s.visibility,
          rows: t.querySelectorAll('tbody tr').length, text: t.innerText};
})()"""


def check_report(browser: Browser, index: Path, shots: Path) -> dict[str, Any]:
    """Load the index and every page it links: no JS error anywhere, the headline table on screen."""
    browser.load(index.resolve().as_uri())
    assert browser.errors() == [], f"{index}: {browser.errors()}"
    box = browser.evaluate(_HEADLINE_BOX)
    assert box is not None, "no headline table in index.html"
    assert box["display"] != "none" and box["visibility"] == "visible"
    assert box["width"] > 100 and box["height"] > 20 and box["rows"] >= 1
    assert 0 <= box["top"] < 1600, "headline table is not in the first screen"
    browser.screenshot(shots / "index.png")
    links = browser.evaluate("[...document.querySelectorAll('#pages a')].map(a => a.href)")
    assert links, "index links no page"
    for url in links:
        browser.load(url)
        assert browser.errors() == [], f"{url}: {browser.errors()}"
        assert browser.evaluate("document.querySelectorAll('.jp-CodeCell .jp-InputArea, .jp-InputArea-editor').length") == 0, f"{url} shows code"
        assert browser.evaluate("document.body.innerText.length") > 0
    browser.load(links[-1])
    browser.screenshot(shots / "last_page.png")
    check_shared_stylesheet(browser, index, links)
    return box


_STYLES = """(() => ({
  links: [...document.querySelectorAll('link[rel=stylesheet]')].map(l => l.getAttribute('href')),
  inline: [...document.querySelectorAll('style')].reduce((n, s) => n + s.textContent.length, 0),
  jupyterlab: getComputedStyle(document.documentElement).getPropertyValue('--jp-ui-font-size1').trim(),
}))()"""


def check_shared_stylesheet(browser: Browser, index: Path, links: list[str]) -> None:
    """Every page links the one ``report.css`` next to it (loaded, with JupyterLab's rules) and
    inlines no stylesheet of its own (a page's <style> is at most a few KB)."""
    css = index.parent / "report.css"
    assert css.is_file() and css.stat().st_size > 100_000
    for url in [index.resolve().as_uri(), *links]:
        browser.load(url)
        st = browser.evaluate(_STYLES)
        assert st["links"] == ["report.css"], f"{url}: {st['links']}"
        assert st["jupyterlab"], f"{url}: report.css not loaded (no JupyterLab CSS variables)"
        assert st["inline"] < 5_000, f"{url} inlines {st['inline']} characters of CSS"


_EXPLORER = """(() => ({
  images: [...document.querySelectorAll('img')].map(i => i.alt),
  text: document.body.innerText,
}))()"""


def check_explorer_opens_on_an_object(browser: Browser, page: Path) -> None:
    """The explorer page shows the explorer's opening view: object 1 of a non-empty selection."""
    browser.load(page.resolve().as_uri())
    got = browser.evaluate(_EXPLORER)
    assert "no object for this selection" not in got["text"]
    assert any(a.startswith("object 1 of ") for a in got["images"]), got["images"]
    assert "VBox(" not in got["text"]


def test_report_in_headless_browser(browser, tmp_path):
    nb_dir = _dummy_notebooks(tmp_path, _write_config(tmp_path))
    result = _run(tmp_path, _write_config(tmp_path, {"custom": {"enabled": False}}), nb_dir)
    assert result.ok
    index = result.layout.index
    box = check_report(browser, index, index.parent)
    assert "loose box" in box["text"]
    png = index.parent / "index.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_study_report_in_headless_browser(browser, tiny_run):
    """The study's own report (tiny config): every page loads without a JavaScript error."""
    index = tiny_run.layout.index
    box = check_report(browser, index, index.parent)
    assert "tight box" in box["text"] and "Custom" in box["text"]
    assert "[" in box["text"] and "CI" in browser_text(browser, index)  # the headline carries its intervals
    check_explorer_opens_on_an_object(browser, index.parent / "06_explore.html")


def browser_text(browser: Browser, page: Path) -> str:
    browser.load(page.resolve().as_uri())
    return browser.evaluate("document.body.innerText")


def test_given_report_in_headless_browser(browser):
    given = os.environ.get("SAMSTUDY_REPORT")
    if not given:
        pytest.skip("set SAMSTUDY_REPORT=results/<run>/report/index.html to check a real report")
    index = Path(given)
    check_report(browser, index, index.parent)
    if (index.parent / "06_explore.html").is_file():
        check_explorer_opens_on_an_object(browser, index.parent / "06_explore.html")
