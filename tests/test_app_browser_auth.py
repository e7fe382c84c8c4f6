"""The exposed app in a real browser (Debian chromium via playwright): the Docker image's
command (`python -m mcssl.access streamlit run app/main.py --server.address=0.0.0.0`), reached
through 127.0.0.1; it finds out by itself that it is exposed. Before the token: the login
only, no image, no media request, no index; a wrong token is refused and logged; `?token=`
(read from the server log, where the launcher printed it) opens the app and leaves the
address bar; paths outside MCSSL_DATA_ROOTS are refused; training is switched off."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_app_browser import _free_port, _idle, _shot, _wait_healthy, page  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
WRONG = "not-the-token-0123456789abcdef"
MEDIA = re.compile(r"/media/([0-9a-f]+)\.")  # st.image's files (not ./static/media/ fonts)


@pytest.fixture
def exposed(tmp_path: Path) -> Iterator[tuple[str, str, Path, Path]]:
    """(url, token, log file, allowed root) of the app started as the Docker image does."""
    port = _free_port()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCSSL_")}
    env |= {"MCSSL_RUNS": str(allowed / "runs"), "MCSSL_DATA_ROOTS": str(allowed),
            "MCSSL_APP_TRAINING": "0"}  # fmt: skip
    env["PYTHONPATH"] = str(ROOT)
    log_path = tmp_path / "app.log"
    log = open(log_path, "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "mcssl.access", sys.executable, "-m", "streamlit", "run",
           "app/main.py", "--server.address=0.0.0.0", f"--server.port={port}"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        (token,) = re.findall(r"mcssl app token \(.*\): (\S+)", log_path.read_text())
        yield f"http://127.0.0.1:{port}", token, log_path, allowed
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _login_only(page) -> None:  # noqa: F811
    page.get_by_role("button", name="Log in").wait_for()
    _idle(page)
    assert page.locator("img").count() == 0
    assert not MEDIA.search(page.content())
    assert page.locator('[data-testid="stSidebar"]').count() == 0
    assert page.get_by_role("heading", name=re.compile("mcssl · ")).count() == 0


def test_exposed_app_lets_in_only_the_token(exposed, page, tmp_path: Path) -> None:  # noqa: F811
    url, token, log_path, allowed = exposed
    media: list[str] = []
    page.on("request", lambda r: media.extend(MEDIA.findall(r.url)))

    page.goto(url)
    _login_only(page)
    _shot(page, "login")
    page.get_by_label("Token", exact=True).fill(WRONG)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Wrong token.").wait_for()
    _login_only(page)
    page.goto(f"{url}/?token={WRONG}")
    page.get_by_text("Wrong token.").wait_for()
    _login_only(page)
    assert WRONG not in page.url
    assert not media and not (allowed / "runs").exists()  # no image, no index
    text = log_path.read_text()
    assert "refused a wrong app token (form)" in text and "refused a wrong app token (URL)" in text
    assert WRONG not in text and text.count(token) == 2  # printed once, at start (token + URL)

    page.goto(f"{url}/?token={token}")
    page.get_by_role("heading", name="mcssl · Explore").wait_for()
    page.get_by_text("k=4").first.wait_for()
    _idle(page)
    page.wait_for_url(lambda u: "token" not in u)  # taken out of the address bar
    assert page.locator("img").count() >= 6 and media
    assert all(len(i) == 32 for i in media)  # 128-bit content hashes
    assert _status(f"{url}/media/{'0' * 32}.png") == 404  # nothing to guess

    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Folder", exact=True).click()
    sidebar.get_by_placeholder("/data/images").fill(str(tmp_path))
    sidebar.get_by_placeholder("/data/images").press("Enter")
    page.get_by_text(f"{tmp_path}: outside the folders this server may read").wait_for()
    _idle(page)
    assert page.get_by_text("outside the folders").count() == 1

    sidebar.get_by_text("Train", exact=True).click()
    page.get_by_text("Training from the app is switched off on this server").wait_for()
    assert page.get_by_role("button", name="Start training").count() == 0
