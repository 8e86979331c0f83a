"""README's first command, `bin/lab`, started as README says, and `bin/setup`, which it runs first.

bin/lab must start JupyterLab as root (Docker images, cloud notebooks) and as an ordinary user, with a display
(it opens the first notebook in the browser) and without one (it prints the URL to open), pass its arguments
on to `jupyter lab`, and show the learner the notebooks and nothing else. Other users are made with a user
namespace (`unshare --user`), so the test needs no second account: inside it the process has that user's id
and no privileges, and still owns this checkout's files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "stablelm-lab-test"
NOTEBOOK = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
USERS = {
    "as you": [],
    "as root": ["unshare", "--user", "--map-root-user"],
    "as an ordinary user": ["unshare", "--user", "--map-user=1000", "--map-group=1000"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def _user_prefix(user: str) -> list[str]:
    prefix = USERS[user]
    if prefix and subprocess.run(prefix + ["true"], capture_output=True).returncode != 0:
        pytest.skip(f"cannot start a process {user}: this system forbids user namespaces (`{' '.join(prefix)}`)")
    return prefix


class Lab:
    """bin/lab running in the background, its log in a file; stopped with its whole process group."""

    def __init__(self, tmp: Path, prefix: list[str], display: bool):
        self.port, self.log = _free_port(), tmp / "lab.log"
        self.opened = tmp / "browser-opened"
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
        env.update(JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"))
        if display:  # a display, and a "browser" that records what it was asked to open
            browser = tmp / "browser"
            browser.write_text(f'#!/bin/sh\necho "$@" > {self.opened}\n')
            browser.chmod(0o755)
            env.update(DISPLAY=":0", BROWSER=str(browser))
        self.process = subprocess.Popen(
            prefix + [str(ROOT / "bin" / "lab"), "--port", str(self.port), f"--IdentityProvider.token={TOKEN}"],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for_url(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(rf"http://\S+:{self.port}/\S+", self.log.read_text())
            if found:
                return found.group(0)
            if self.process.poll() is not None:
                pytest.fail(f"bin/lab exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        pytest.fail(f"bin/lab printed no URL in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes]:
        """GET with the token; connections are refused for a moment after the URL is printed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return _get(f"http://127.0.0.1:{self.port}{path}{'&' if '?' in path else '?'}token={TOKEN}")
            except OSError as e:
                if time.monotonic() > deadline:
                    pytest.fail(f"GET {path}: {e}\n{self.log.read_text()[-3000:]}")
                time.sleep(0.5)

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


#: README's way as whoever runs the tests (headless), then the other kind of user (root or not), with a display
CASES = [("as you", False), ("as an ordinary user" if os.geteuid() == 0 else "as root", True)]


@pytest.mark.parametrize("user, display", CASES)
def test_bin_lab_serves_the_notebooks_and_opens_the_first(user, display, tmp_path):
    lab = Lab(tmp_path, _user_prefix(user), display)
    try:
        url = lab.wait_for_url()
        assert url.split("?")[0].endswith("/lab/tree/01_start_here.ipynb"), url  # the first notebook
        status, page = lab.get("/lab")
        assert status == 200 and b"JupyterLab" in page
        status, body = lab.get("/api/contents")
        names = sorted(item["name"] for item in json.loads(body)["content"])
        assert [n for n in names if not NOTEBOOK.match(n)] == [], "the learner's file browser shows more"
        assert [f"{i:02d}" for i in range(1, 10)] == [n[:2] for n in names][:9], names
        status, _ = lab.get("/api/contents/01_start_here.ipynb?content=0")
        assert status == 200
        if display:  # JupyterLab hands the browser a page that redirects to the first notebook
            deadline = time.monotonic() + 30
            while not lab.opened.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            opened = lab.opened.read_text().split()[-1]
            target = Path(opened.removeprefix("file://")).read_text() if opened.startswith("file:") else opened
            assert "/lab/tree/01_start_here.ipynb" in target
        else:
            assert not lab.opened.exists()
    finally:
        lab.stop()
    assert lab.process.returncode is not None
    with pytest.raises(OSError):  # the server is gone
        _get(f"http://127.0.0.1:{lab.port}/api/status")


# ---- bin/setup: which pip commands it runs, seen through a stand-in Python that records its arguments ----

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$SETUP_LOG"
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
"""


def run_setup(tmp: Path, **env_vars) -> list[str]:
    log = tmp / "calls"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STABLELM_TORCH")}
    env.update(PYTHON=str(tmp / "python3"), SETUP_LOG=str(log), **env_vars)
    subprocess.run([str(tmp / "bin" / "setup")], cwd=tmp, env=env, check=True)
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def setup_copy(tmp_path):
    (tmp_path / "bin").mkdir()
    shutil.copy(ROOT / "bin" / "setup", tmp_path / "bin" / "setup")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "python3").write_text(FAKE_PYTHON)
    (tmp_path / "python3").chmod(0o755)
    return tmp_path


def test_bin_setup_installs_torch_from_the_index_the_learner_names(setup_copy):
    pip = "-m pip install --quiet --disable-pip-version-check"
    calls = run_setup(setup_copy)
    assert calls == ["-m venv .venv", f"{pip} --upgrade pip", f"{pip} torch==2.13.0", f"{pip} -e .[test]"]
    assert run_setup(setup_copy) == []  # installed: nothing to do
    index = "https://example.invalid/whl/cpu"
    calls = run_setup(setup_copy, STABLELM_TORCH_INDEX_URL=index)  # another choice installs again
    assert calls == [f"{pip} --upgrade pip", f"{pip} --index-url {index} torch==2.13.0", f"{pip} -e .[test]"]
    assert run_setup(setup_copy, STABLELM_TORCH_INDEX_URL=index) == []
    assert f"{pip} torch==2.12.0" in run_setup(setup_copy, STABLELM_TORCH_VERSION="2.12.0")
