"""The whole workbook in a real browser, as a learner and a teacher meet it.

1. Every notebook in JupyterLab (127.0.0.1, headless Chromium, 1400 x 1000): Run All Cells, no cell shows an
   error, every control is moved at least once and its figure must change, figure text is at least 10 px,
   and a slider reaches its tensor's last row with the End key after the tensor changed.
2. Every stored notebook exported to HTML (nbconvert, as nbviewer shows it) and opened with the network
   blocked: every figure and every control shows as a picture that loaded, and no Python repr of a widget.

Screenshots land in $STABLELM_SCREENSHOTS (default: pytest's temporary folder for the test), one per figure
after its control moved and one per exported page, so a person can look.

Needs Debian's chromium and the playwright package; .ci/run installs both, so in CI a missing browser is a
failure. Elsewhere the test is skipped with the reason, since a learner's machine may have no Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "stablelm-lab-test"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
CONTROLS = ".widget-dropdown select, .widget-slider .noUi-handle"


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
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("STABLELM_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _need_browser()
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")  # JupyterLab autosaves: never touch the originals
    shutil.copytree(ROOT / "notebooks", root / "notebooks" / "stored")  # as a learner opens them first
    for path in (root / "notebooks").glob("*.ipynb"):  # cleared, so a numbered prompt means it ran here
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        path.write_text(json.dumps(nb))
    config = root / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    # every cell drawn, not only those on screen (JupyterLab's windowing), so a test can count outputs
    settings = root / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port = _free_port()
    # the live kernels need no stored pictures (kaleido's Chromium would cost seconds per notebook)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "STABLELM_PICTURES": "0",
        "JUPYTERLAB_SETTINGS_DIR": str(root / "lab-settings"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--allow-root",
            "--no-browser",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            f"--ServerApp.token={TOKEN}",
            f"--ServerApp.root_dir={root / 'notebooks'}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


def _no_error_shown(page, notebook: str) -> None:
    assert page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count() == 0, notebook
    assert page.locator(".jp-OutputArea-output:has-text('Traceback')").count() == 0, notebook


def _small_text(page) -> list[str]:
    """Figure text drawn under 10 px: (size, text) of every visible SVG text in a plotly figure."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot svg text')]
        .filter(t => t.textContent.trim() && t.getBBox().width > 0)
        .map(t => [parseFloat(getComputedStyle(t).fontSize), t.textContent])
        .filter(([size]) => size < 10).map(([size, text]) => `${size}px: ${text}`)""")


def _overlapping_labels(page) -> list[str]:
    """Pairs of point labels (scatter text) of one figure whose boxes overlap on screen."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(plot => {
        const boxes = [...plot.querySelectorAll('.textpoint text')].filter(t => t.textContent.trim())
            .map(t => [t.textContent, t.getBoundingClientRect()]);
        const hits = [];
        boxes.forEach(([a, p], i) => boxes.slice(i + 1).forEach(([b, q]) => {
            const w = Math.min(p.right, q.right) - Math.max(p.left, q.left);
            const h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
            if (w > 1 && h > 1) hits.push(`${a} / ${b}`);
        }));
        return hits;
    })""")


def _move(control, kind: str, key: str = "ArrowRight") -> None:
    if kind == "select":  # the next option, by index: labels may carry whitespace the widget strips
        n_options = control.evaluate("select => select.options.length")
        control.select_option(index=(control.evaluate("select => select.selectedIndex") + 1) % n_options)
    else:
        control.focus()
        control.press(key)


def _figure_of(control):
    output = control.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")
    return output.locator(".js-plotly-plot").first


def _drawn(figure) -> str:
    """What a figure draws: the SVG of its plot (traces, axes, title) and its WebGL canvas' size."""
    return figure.evaluate("f => [...f.querySelectorAll('.main-svg')].map(s => s.innerHTML).join('')")


def _moves_its_figure(page, control, kind: str, key: str = "ArrowRight") -> bool:
    figure = _figure_of(control)
    figure.wait_for(timeout=60_000)
    before = _drawn(figure)
    for _ in range(3):  # a key press can land while the page is still settling: try again
        _move(control, kind, key)
        deadline = time.time() + 20
        while _drawn(figure) == before and time.time() < deadline:
            page.wait_for_timeout(200)
        if _drawn(figure) != before:
            return True
    return False


def _end_reaches_the_last_row(page) -> None:
    """03 and 04's block explorer: after the tensor changes, End takes the row slider to that tensor's last
    row (the heading says how many rows it has)."""
    explorer = page.locator(".widget-vbox:has(.widget-dropdown select):has(.widget-slider)").last
    select = explorer.locator(".widget-dropdown select").first
    heading = explorer.locator(".widget-html").first
    select.select_option(index=select.evaluate("s => s.options.length") - 1)
    name = select.evaluate("s => s.options[s.selectedIndex].text").strip()
    deadline = time.time() + 20
    while name not in heading.inner_text() and time.time() < deadline:
        page.wait_for_timeout(200)
    n_rows = int(re.search(r"row \d+ of (\d+)", heading.inner_text()).group(1))
    handle = explorer.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("End")
    readout = explorer.locator(".widget-slider .widget-readout").first
    deadline = time.time() + 20
    while readout.inner_text().strip() != str(n_rows - 1) and time.time() < deadline:
        page.wait_for_timeout(200)
    assert readout.inner_text().strip() == str(n_rows - 1), f"End stopped at {readout.inner_text()} of {n_rows}"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_runs_and_every_control_moves_its_figure(lab, browser, shots, notebook):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{lab}/lab/workspaces/test-{notebook[:2]}/tree/{notebook}?reset&token={TOKEN}")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        _wait_for_idle_kernel(lab, notebook)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
            }""",
            timeout=300_000,
        )
        _no_error_shown(page, notebook)
        controls = page.locator(CONTROLS)
        for i in range(controls.count()):
            control = controls.nth(i)
            if (
                control.evaluate("e => getComputedStyle(e.closest('.widget-slider, .widget-dropdown')).display")
                == "none"
            ):
                continue  # a slider hidden because its range holds one value
            kind = "select" if control.evaluate("e => e.tagName") == "SELECT" else "slider"
            control.scroll_into_view_if_needed()
            assert _moves_its_figure(page, control, kind), f"{notebook}: control {i} did not change its figure"
            _figure_of(control).screenshot(path=str(shots / f"{notebook[:-6]}-control{i}.png"))
        if notebook.startswith(("03", "04")):  # the block explorer
            _end_reaches_the_last_row(page)
        small = _small_text(page)
        assert not small, f"{notebook}: figure text under 10 px: {small[:5]}"
        overlapping = _overlapping_labels(page)
        assert not overlapping, f"{notebook}: point labels overlap: {overlapping}"
        _no_error_shown(page, notebook)
    finally:
        page.close()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_stored_notebook_shows_pictures_in_jupyterlab(lab, browser, shots, notebook):
    """Opened as cloned (untrusted, no widget state): every figure and control shows a picture or a plot,
    never a widget's Python repr."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{lab}/lab/workspaces/stored-{notebook[:2]}/tree/stored/{notebook}?reset&token={TOKEN}")
        page.wait_for_selector(".jp-Notebook .jp-OutputArea-output", timeout=60_000)
        page.wait_for_timeout(1000)
        outputs = page.locator(".jp-OutputArea-output")
        text = " ".join(outputs.all_inner_texts())
        assert not re.search(r"\b(VBox|HBox|FigureWidget)\(", text), f"{notebook} shows a widget's repr"
        shown = page.locator(".jp-OutputArea-output img, .jp-OutputArea-output .js-plotly-plot").count()
        assert shown >= _stored_figures(notebook), f"{notebook}: {shown} of {_stored_figures(notebook)}"
        page.screenshot(path=str(shots / f"{notebook[:-6]}-stored.png"))
    finally:
        page.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    _need_browser()
    out = tmp_path_factory.mktemp("html")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "html",
            "--output-dir",
            str(out),
            *[str(ROOT / "notebooks" / n) for n in NOTEBOOKS],
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def _stored_figures(notebook: str) -> int:
    """Outputs that hold a figure or a control: each must show as a picture."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    return sum(
        1
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for o in cell["outputs"]
        if {"application/vnd.plotly.v1+json", "application/vnd.jupyter.widget-view+json"} & set(o.get("data", {}))
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_exported_html_shows_every_figure_offline(exported, browser, shots, notebook):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requested = []

    def offline(route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            requested.append(url)
            route.abort()

    try:
        page.route("**/*", offline)
        page.goto((exported / notebook.replace(".ipynb", ".html")).as_uri())
        page.wait_for_load_state("load")
        pictures = page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output img')]
            .map(img => [img.naturalWidth, img.naturalHeight])""")
        expected = _stored_figures(notebook)
        assert len(pictures) >= expected, f"{notebook}: {len(pictures)} pictures for {expected} figures"
        assert all(w > 100 and h > 100 for w, h in pictures), f"{notebook}: a picture did not load: {pictures}"
        text = page.inner_text("body")
        assert not re.search(r"\b(VBox|HBox|FigureWidget)\(", text), f"{notebook} shows a widget's Python repr"
        assert page.locator("div.plotly-graph-div").count() == 0, f"{notebook}: a plotly div needs plotly.js"
        page.screenshot(path=str(shots / f"{notebook[:-6]}-exported.png"), full_page=True)
    finally:
        page.close()
