"""The rendered course site, opened in headless Chromium: every lesson page loads without console
errors and shows its figures; math renders; lesson-to-lesson links work. Skipped without Chromium
on a developer's machine; under CI=true (where .ci/run installs it) a missing Chromium fails.
"""

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = "Chromium is not installed (apt-get install chromium); .ci/run installs it"
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None and not IN_CI, reason=MISSING)]
LESSONS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REPOSITORY = PYPROJECT["project"]["urls"]["Repository"]  # https://github.com/OWNER/NAME
COLAB = "https://colab.research.google.com/github/" + REPOSITORY.removeprefix("https://github.com/")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "tools/build_site.py", "--out", str(out)], cwd=ROOT, check=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class Browser:
    """Just enough of the Chrome DevTools Protocol: open a page, collect errors, evaluate."""

    def __init__(self, user_data_dir: Path):
        import websocket

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={user_data_dir}", "--remote-debugging-port=0", "about:blank"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for line in self.process.stderr:
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                break
        else:
            raise RuntimeError("Chromium did not start its DevTools endpoint")
        self.ws = websocket.create_connection(match[1], timeout=60)
        self.next_id, self.events = 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1440, height=900,
                  deviceScaleFactor=1, mobile=False)  # a laptop screen  # fmt: skip

    def call(self, method, session=False, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def open(self, url, settle_js="document.readyState === 'complete'"):
        """Navigate; return the console errors, exceptions and failed loads seen on the way."""
        self.events = []
        self.call("Page.navigate", session=True, url=url)
        self.wait_for(settle_js)
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
                errors.append(str([a.get("value") for a in params["args"]]))
            elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
        return errors

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True)  # fmt: skip
        return result["result"].get("value")

    def wait_for(self, expression, seconds=30):
        import time

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.2)
        raise TimeoutError(f"page never satisfied: {expression}")

    def close(self):
        self.ws.close()
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:  # only reached under CI=true: CI must not pass by skipping the site
        pytest.fail(f"CI=true but {MISSING}")
    browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


IMAGES = "[...document.images].filter(i => i.src.startsWith('data:image/png'))"
SIDEWAYS = (  # the first line of each code cell whose text is wider than its box
    "[...document.querySelectorAll('.jp-InputArea .highlight, .jp-InputArea pre')]"
    ".filter(e => e.scrollWidth > e.clientWidth + 1)"
    ".map(e => e.textContent.trim().split('\\n')[0])"
)
LOADED = f"document.readyState === 'complete' && {IMAGES}.every(i => i.complete)"


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_page_loads_cleanly_and_shows_its_figures(site, browser, lesson):
    errors = browser.open(f"{site}/notebooks/{lesson}.html", settle_js=LOADED)
    assert not errors, errors
    notebook = json.loads((ROOT / "notebooks" / f"{lesson}.ipynb").read_text())
    figures = sum(
        "image/png" in o.get("data", {}) for c in notebook["cells"] for o in c.get("outputs", [])
    )
    shown = browser.evaluate(f"{IMAGES}.filter(i => i.naturalWidth > 0).length")
    assert shown == figures, f"{lesson}: {figures} figures in the notebook, {shown} shown"
    title = browser.evaluate("document.querySelector('h1, h2').textContent")
    assert title.strip().startswith(lesson[:2]), title
    assert browser.evaluate(SIDEWAYS) == [], f"{lesson}: code cells that scroll sideways"
    assert browser.evaluate("document.querySelectorAll('.celltoolbar, .cell-tag').length") == 0
    badges = browser.evaluate(
        "[...document.querySelectorAll('a[href^=\"https://colab.research.google.com/\"]')]"
        ".map(a => [a.href, a.querySelector('img') ? a.querySelector('img').naturalWidth : 0])"
    )
    ref = PYPROJECT["tool"]["lora_course"]["colab-ref"]
    assert badges == [[f"{COLAB}/blob/{ref}/notebooks/{lesson}.ipynb", 117]], badges


def test_navigation_names_each_lesson_by_its_title(site, browser):
    assert not browser.open(f"{site}/index.html")
    names = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('nav a')]"
        ".filter(a => (a.getAttribute('href') || '').includes('notebooks/'))"
        ".map(a => [a.getAttribute('href').split('/').pop(), a.textContent.trim()]))"
    )
    for lesson in LESSONS:
        notebook = json.loads((ROOT / "notebooks" / f"{lesson}.ipynb").read_text())
        heading = "".join(notebook["cells"][0]["source"]).splitlines()[0].removeprefix("# ")
        assert names[f"{lesson}.html"] == heading
    title = "05 · Fine-tune SmolLM2 with PEFT and the Trainer"  # not "Finetune smollm2 with peft"
    assert names["05_finetune_smollm2_with_peft.html"] == title


def test_math_renders_and_lessons_link_in_order(site, browser):
    rendered = "document.querySelectorAll('.MathJax_CHTML, .MathJax').length > 0"
    errors = browser.open(f"{site}/notebooks/02_lora_linear_from_scratch.html", settle_js=rendered)
    assert not errors, errors
    next_link = browser.evaluate("document.querySelector('a.md-footer__link--next').href")
    assert next_link.endswith("03_parameter_arithmetic.html")
    errors = browser.open(next_link)
    assert not errors and "03" in browser.evaluate("document.title")


def test_the_instructors_guide_is_a_page_with_working_lesson_links(site, browser):
    assert not browser.open(f"{site}/workshop.html")
    assert browser.evaluate("document.title").startswith("Instructor's guide")
    lessons = browser.evaluate(
        "[...document.querySelectorAll('article a')].map(a => a.getAttribute('href'))"
        ".filter(h => h.startsWith('notebooks/'))"
    )
    assert lessons and all(Path(h).stem in LESSONS for h in lessons), lessons


def test_home_page_lists_every_lesson_in_order(site, browser):
    assert not browser.open(f"{site}/index.html")
    nav = browser.evaluate(
        "[...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))"
        ".filter(h => h && h.includes('notebooks/'))"
    )
    found = list(dict.fromkeys(Path(h).stem for h in nav))
    assert found == LESSONS
