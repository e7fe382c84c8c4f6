"""End to end in a real browser: the README's app command (`make app`), Debian chromium
driven by playwright. Progress while features are computed -> upload -> overlays for
k = 2..4 -> Concepts (categorical pseudo-concept axis) -> click a token -> retrieval results
-> a hit's "query from here" re-queries -> train a smoke run from the sidebar -> its export
appears in the checkpoint picker. Screenshots of each page go to build/screenshots/
(docs/img/ holds copies)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
HIT = re.compile(r"^\S+ \(\d+,\d+\) \d\.\d{3}")  # a retrieval hit's caption: "name (r,c) 0.873"
COORDS_FRAME = 'iframe[title="streamlit_image_coordinates.streamlit_image_coordinates"]'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not become healthy in {timeout}s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The app exactly as the README starts it (the bundled checkpoint), runs in tmp."""
    port = _free_port()
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "MCSSL_DEFAULT_CHECKPOINT"}
    env["MCSSL_RUNS"] = str(runs)
    log = open(tmp_path / "app.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["make", "-s", "app", f"PORT={port}"], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}", runs
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail(
            "the browser test needs Debian chromium: run `bash scripts/install_browser.sh` "
            "(or `make test`, which runs it; apt-get as root or with sudo)",
            pytrace=False,
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(120_000)
        yield pg
        browser.close()


def _shot(page, name: str, height: int = 1000) -> None:
    """The app scrolls inside its own container: a taller window shows the whole page."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(800)  # let the last images paint
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def _go(page, name: str) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
    page.get_by_role("heading", name=f"mcssl · {name}").wait_for()


def _idle(page) -> None:
    """Waits until Streamlit has finished the current run."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")


def _bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


def _overlay_sources(page) -> list[str]:
    """The image URLs of the k=4 overlays (Streamlit names a media file by its content)."""
    shots = page.locator('[data-testid="stImage"]').filter(has_text=re.compile(r"^k=4$"))
    return [shots.nth(i).locator("img").get_attribute("src") for i in range(shots.count())]


# Records every progress-bar text, whether the running indicator and the boot screen (the
# page's HTML, before Streamlit's JavaScript has loaded) were ever visible, from the first byte
# of the page on (an element shown for a few milliseconds is not missed).
WATCH = """
window.__progress = []; window.__running = false; window.__boot = false;
new MutationObserver(() => {
  const b = document.getElementById("mcssl-boot");
  if (b && b.getBoundingClientRect().width > 0) window.__boot = true;
  for (const el of document.querySelectorAll('[data-testid="stProgress"]')) {
    const t = el.innerText.trim();
    if (t && !window.__progress.includes(t)) window.__progress.push(t);
  }
  const s = document.querySelector('[data-testid="stStatusWidget"]');
  if (s && s.getBoundingClientRect().width > 0) window.__running = true;
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_upload_overlays_click_retrieve_and_train(server, page, tmp_path: Path) -> None:
    url, runs = server
    page.add_init_script(WATCH)
    # what the server sends: a bar shown and cleared within one browser frame (a quick machine
    # encodes one small image that fast) is never drawn, but its delta still crosses the socket
    sent: list[bytes] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda m: sent.append(_bytes(m))))
    page.goto(url)
    page.get_by_role("heading", name="mcssl · Explore").wait_for()
    page.get_by_text("k=4").first.wait_for()
    _idle(page)
    assert page.get_by_text("k=4", exact=True).count() == 6  # six demo photos
    # the warm-up (started with the server) may have encoded them before the page opened;
    # while it works, its bar names the step
    progress = page.evaluate("window.__progress")
    assert all(t.startswith(("Starting the engine", "Loading the model", "Computing features"))
               for t in progress), progress  # fmt: skip
    assert page.evaluate("window.__running")  # the running indicator was shown
    assert page.evaluate("window.__boot")  # the boot screen showed before Streamlit drew
    assert page.locator("#mcssl-boot").count() == 0  # and went once it had
    _shot(page, "explore", 1500)
    # co-clustered: one k-means over the six photos, so every k=4 overlay is redrawn
    before = set(_overlay_sources(page))
    page.get_by_text("Co-cluster these images").click()
    _idle(page)
    deadline = time.time() + 60  # the rows are redrawn one after another
    while set(after := _overlay_sources(page)) & before and time.time() < deadline:
        page.wait_for_timeout(500)
    assert len(after) == 6 and not set(after) & before, (before, after)
    _shot(page, "explore_cocluster", 1500)
    page.get_by_text("Co-cluster these images").click()  # back to per-image clusters
    _idle(page)

    img = tmp_path / "mine.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)).save(img)
    page.evaluate("window.__progress = []")  # from here on: the upload's progress only
    sent.clear()
    page.locator('[data-testid="stSidebar"]').get_by_text("Upload", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(img))
    page.get_by_text("mine.png").last.wait_for()
    for k in (2, 3, 4):
        page.get_by_text(f"k={k}", exact=True).first.wait_for()
    _idle(page)
    assert page.get_by_text("k=2", exact=True).count() == 1  # one uploaded image, one row
    # the page encoded it under a progress bar ("Computing features…", then "…: 1/1 images"):
    # the server sent it; whether the browser drew it depends on the machine's speed
    progress = page.evaluate("window.__progress")
    assert any(b"Computing features" in m for m in sent), progress
    assert all(t.startswith("Computing features") for t in progress), progress
    _shot(page, "upload")

    page.locator('[data-testid="stSidebar"]').get_by_text("Demo photos", exact=True).click()
    _idle(page)
    _go(page, "Concepts")
    page.get_by_text("Mean pseudo-concept probabilities").wait_for()
    _idle(page)
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for()
    layout = plot.evaluate(
        "el => el._fullLayout.xaxis.type + '|' + el._fullLayout.xaxis.title.text"
    )
    kind, title = layout.split("|", 1)
    assert kind == "category" and title.startswith("pseudo-concept id")  # "#129" is a name
    _shot(page, "concepts", 1800)

    _go(page, "Retrieve")
    page.get_by_text("Click a token.").wait_for()
    _idle(page)
    frame = page.frame_locator(COORDS_FRAME).first  # the only one on this page
    frame.locator("img").wait_for()
    frame.locator("img").click(position={"x": 200, "y": 150})
    page.get_by_text("Top 12 tokens across 9 images").wait_for()
    page.get_by_text("cosine similarity to token").wait_for()
    _idle(page)
    _shot(page, "retrieve", 1500)
    # same pseudo-concept only: every hit carries the query token's most probable id
    query = page.get_by_text(re.compile(r"^Query token \(\d+, \d+\): pseudo-concept #\d+"))
    pc = re.search(r"#(\d+)", query.inner_text()).group(1)
    page.get_by_text("Same pseudo-concept only").click()
    _idle(page)
    ids = [re.search(r"· #(\d+)$", t).group(1) for t in page.get_by_text(HIT).all_inner_texts()]
    assert ids and set(ids) == {pc}, (pc, ids)
    _shot(page, "retrieve_same_concept", 1500)
    page.get_by_text("Same pseudo-concept only").click()
    _idle(page)
    caption = page.get_by_text(HIT).nth(4).inner_text()
    name, r, c = re.match(r"^(\S+) \((\d+),(\d+)\)", caption).groups()
    page.get_by_role("button", name="query from here").nth(4).click()
    page.get_by_text(f"cosine similarity to token ({r}, {c})").wait_for()
    _idle(page)
    assert page.get_by_role("combobox", name="Query image").input_value() == name
    first = page.get_by_text(HIT).first.inner_text()
    assert first.split()[2] == "1.000"  # the best hit of the new query is the token itself

    _go(page, "Train")
    out = runs / "browser-smoke"
    page.get_by_label("Output folder").fill(str(out))
    page.get_by_label("Overrides (key=value, one per line)").fill("optim.epochs=1")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("finished: browser-smoke").wait_for(timeout=240_000)
    page.get_by_text(f"Exported {out / 'teacher.safetensors'}").wait_for()
    _shot(page, "train", 1600)
    assert (out / "teacher.safetensors").exists()

    _go(page, "Explore")
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    page.get_by_role("option", name="run browser-smoke · export").wait_for()
