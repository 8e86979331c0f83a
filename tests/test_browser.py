"""The workbook in a real browser: JupyterLab on 127.0.0.1, headless Chromium, Run All Cells, move a control,
and the figure must change with no cell showing an error. Screenshots land in $STABLELM_SCREENSHOTS
(default: pytest's temporary folder).

Needs Debian's chromium and the playwright package; .ci/run installs both, so in CI a missing browser is a
failure. Elsewhere the test is skipped with the reason, since a learner's machine may have no Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "stablelm-lab-test"
#: (notebook, CSS selector of the control to move, how to move it)
CASES = [("06_quantization_error.ipynb", ".widget-dropdown select", "select"),
         ("09_activations_and_debugging.ipynb", ".widget-slider .noUi-handle", "arrow")]


def _need_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (bin/setup installs it; or .venv/bin/pip install playwright)"
    else:
        reason = None if Path(CHROMIUM).exists() else "chromium is not installed (sudo apt-get install chromium)"
    if reason and os.environ.get("CI"):
        pytest.fail(f"the browser test must run in CI: {reason}")
    if reason:
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _need_browser()
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")  # JupyterLab autosaves: never touch the originals
    for path in (root / "notebooks").glob("*.ipynb"):         # cleared, so a numbered prompt means it ran here
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        path.write_text(json.dumps(nb))
    config = root / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config)}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", "--ip", "127.0.0.1",
         "--port", str(port), f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root / 'notebooks'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                _get_json(f"{base}/api/status?token={TOKEN}")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_idle_kernel(base: str, notebook: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        sessions = _get_json(f"{base}/api/sessions?token={TOKEN}")
        kernels = [s["kernel"] for s in sessions if s.get("path", "").endswith(notebook)]
        if kernels and all(k["execution_state"] == "idle" and k["connections"] > 0 for k in kernels):
            return
        time.sleep(0.5)
    pytest.fail(f"the kernel of {notebook} never became idle")


def _move(widget, move: str) -> None:
    if move == "select":  # the next option, by index: labels may carry whitespace the widget strips
        n_options = widget.evaluate("select => select.options.length")
        widget.select_option(index=(widget.evaluate("select => select.selectedIndex") + 1) % n_options)
    else:
        widget.focus()
        widget.press("ArrowRight")


@pytest.mark.parametrize("notebook,control,move", CASES, ids=[c[0] for c in CASES])
def test_notebook_runs_and_its_widget_responds(lab, notebook, control, move, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("STABLELM_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{lab}/lab/workspaces/test-{notebook[:2]}/tree/{notebook}?reset&token={TOKEN}")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        _wait_for_idle_kernel(lab, notebook)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
            }""", timeout=300_000)
        assert page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count() == 0
        assert page.locator(".jp-OutputArea-output:has-text('Traceback')").count() == 0

        widget = page.locator(control).last
        widget.scroll_into_view_if_needed()
        output = widget.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")
        figure = output.locator(".js-plotly-plot").first
        figure.wait_for(timeout=60_000)
        before = figure.inner_text()
        for attempt in range(3):  # a key press can land while the page is still settling: try again
            _move(widget, move)
            deadline = time.time() + 20
            while figure.inner_text() == before and time.time() < deadline:
                page.wait_for_timeout(250)
            if figure.inner_text() != before:
                break
        else:
            pytest.fail("the figure did not change after the control moved (3 tries)")
        page.screenshot(path=str(shots / f"{notebook}.png"), full_page=False)
        assert page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count() == 0
        browser.close()
