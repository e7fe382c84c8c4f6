"""App latency in a real browser (Debian chromium via playwright) against the engine alone.

    python benchmarks/app_latency.py [--checkpoint vits16|default] [--reps 5] [--cold 5]
                                     [--app PATH]

Starts the app (`streamlit run app/serve.py` as `make app` does; ``--app`` another copy of
it or its main.py, e.g. an older version for a before/after) on the demo gallery and
measures: the cold start (first visible feedback, first complete row, all 6 rows of
Explore; a fresh server for each of --cold starts, since one varies by +-1 s here), a warm
reload, adding a k (new k-means overlays for 6 images; median of --reps),
and clicking a token on Retrieve (heat-map + top-12 across the gallery, index already
built; median of --reps). Baseline,
same machine and run: the same computations called in-process without Streamlit or the
browser, in bf16 (where the CPU has it) and fp32. `vits16` is a randomly initialised
ViT-S/16 with the paper's concept head (K = 8192): the cost does not depend on what the
model learnt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_app_browser import COORDS_FRAME, _free_port, _wait_healthy  # noqa: E402

from mcssl.checkpoint import EXPORT_FORMAT  # noqa: E402
from mcssl.config import load_config  # noqa: E402
from mcssl.explore.concepts import K_CHOICES, token_similarity  # noqa: E402
from mcssl.explore.encoder import DEFAULT_CHECKPOINT, load_encoder  # noqa: E402
from mcssl.explore.features import FALLBACK, FeatureExtractor, Settings  # noqa: E402
from mcssl.explore.gallery import Gallery, gallery_index  # noqa: E402
from mcssl.explore.pipeline import label_features  # noqa: E402


def vits16_export(path: Path) -> Path:
    from mcssl.models import Student

    cfg = load_config("paper_vits16", ["data.path=samples"])  # data is not used here
    s = Student(cfg.model).eval()
    tensors = {f"backbone.{k}": v for k, v in s.backbone.state_dict().items()}
    tensors |= {f"head.{k}": v for k, v in s.concept_head.state_dict().items()}
    tensors["center"] = torch.zeros(cfg.model.num_concepts)
    meta = {"format": EXPORT_FORMAT, "config": json.dumps(cfg.to_dict()), "teacher_temp": "0.04"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def import_floor(reps: int = 3) -> float:
    """Seconds a fresh Python takes to import PyTorch, timm and scikit-learn's k-means (median
    of ``reps``): the floor under any cold start, and a yardstick of how fast this machine is
    right now (the same VM measured 5 s and 8 s an hour apart)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, timm, sklearn.cluster"], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def first_page_settings(ckpt: str) -> dict:
    """The settings the app opens with: the checkpoint's stored defaults, else the fallback."""
    return {**FALLBACK, **load_encoder(ckpt).defaults}


def engine_baseline(ckpt: str, reps: int) -> dict[str, float]:
    """The same work without the app, at the first page's settings: features (cold), k-means
    for k=2..5, a token query."""
    gallery = Gallery.demo()
    enc = load_encoder(ckpt)
    first = first_page_settings(ckpt)
    out: dict[str, float] = {}
    for precision in ("auto", "fp32"):
        ex = FeatureExtractor(enc, Settings(**first, precision=precision))
        ex(gallery.images[6:7])  # warm-up (and the bf16 copy of the weights)
        t = time.perf_counter()
        ex(gallery.images[:6])
        out[f"features_6_images_{ex.dtype_name}_s"] = time.perf_counter() - t
    index = gallery_index(ex, gallery, None)
    k_times, q_times = [], []
    for _ in range(reps):
        t = time.perf_counter()
        label_features(ex(gallery.images[:6]), (2, 3, 4, 5), chain=K_CHOICES)
        k_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        (f,) = ex([gallery.images[0]])
        token_similarity(f.tokens, 10)
        index.query_token(0, 0, 10, top=12)
        q_times.append(time.perf_counter() - t)
    out["add_k_s"] = statistics.median(k_times)
    out["token_query_s"] = statistics.median(q_times)
    return out


def _idle(page) -> None:
    page.wait_for_timeout(100)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")


FEEDBACK = (
    '#mcssl-boot, [data-testid="stSpinner"], [data-testid="stProgress"], '
    '[data-testid="stStatusWidget"], [data-testid="stImage"]'
)
# Runs in the page before any of its scripts: every 20 ms, whether anything tells the user
# that the app is working (the boot screen, Streamlit's running indicator, a spinner or a
# progress bar) or shows a result (an overlay image), with performance.now() (ms from the
# navigation's start).
RECORDER = f"""
window.__feedback = [];
setInterval(() => {{
  const seen = [...document.querySelectorAll('{FEEDBACK}')].some(
    (e) => e.getClientRects().length > 0);
  window.__feedback.push([performance.now(), seen]);
}}, 20);
"""


COLD_KEYS = ("first_feedback_s", "longest_blank_s", "first_row_s", "first_paint_cold_s")


def blank_stretches(samples: list[tuple[float, bool]], until_ms: float) -> tuple[float, float]:
    """Recorder samples -> (seconds to the first sample showing something, longest run of
    seconds with nothing shown before ``until_ms``, the start of the page's load included)."""
    seen = [t for t, shown in samples if shown and t <= until_ms] + [until_ms]
    gaps = [b - a for a, b in zip([0.0, *seen[:-1]], seen, strict=True)]
    return seen[0] / 1000, max(gaps) / 1000


def cold_start(page, url: str) -> dict[str, float]:
    """Seconds from opening the page to: the first visible feedback (boot screen, running
    indicator, spinner, progress bar or a result), the first complete row, all 6 rows; and
    the longest time with nothing of these shown before all 6 rows are there."""
    page.add_init_script(RECORDER)
    t = time.perf_counter()
    page.goto(url)
    page.get_by_text("k=4", exact=True).first.wait_for()
    out = {"first_row_s": time.perf_counter() - t}
    page.get_by_text("k=4", exact=True).nth(5).wait_for()
    done_ms = page.evaluate("performance.now()")
    _idle(page)
    out["first_paint_cold_s"] = time.perf_counter() - t
    samples = page.evaluate("window.__feedback")
    out["first_feedback_s"], out["longest_blank_s"] = blank_stretches(samples, done_ms)
    return out


@contextlib.contextmanager
def browser_page() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(600_000)
        yield page
        browser.close()


@contextlib.contextmanager
def server(app: str, ckpt: str, runs: Path) -> Iterator[str]:
    """A fresh ``streamlit run APP`` (a cold engine) -> its URL once it answers."""
    port = _free_port()
    env = os.environ | {"MCSSL_DEFAULT_CHECKPOINT": ckpt, "MCSSL_RUNS": str(runs)}
    streamlit = str(Path(sys.executable).parent / "streamlit")
    proc = subprocess.Popen([streamlit, "run", app, "--server.port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def browser_times(url: str, reps: int, grid: int) -> dict[str, float]:
    """A cold start, then the warm measurements on the same server. ``grid``: tokens per
    side of the (square) first demo photo."""
    with browser_page() as page:
        out = cold_start(page, url)
        t = time.perf_counter()
        page.goto(url)
        page.get_by_text("k=4", exact=True).nth(5).wait_for()
        _idle(page)
        out["first_paint_warm_s"] = time.perf_counter() - t
        ks = page.locator('[data-testid="stMultiSelect"]').filter(has_text="k (clusters per")
        adds = []
        for _ in range(reps):
            t = time.perf_counter()
            ks.locator("input").click()
            page.get_by_role("option", name="5", exact=True).click()
            page.get_by_text("k=5", exact=True).nth(5).wait_for()
            _idle(page)
            adds.append(time.perf_counter() - t)
            page.keyboard.press("Backspace")  # remove k = 5 again (the last chip), not timed
            page.keyboard.press("Escape")
            page.get_by_text("k=5", exact=True).first.wait_for(state="detached")
            _idle(page)
        out["add_k_s"] = statistics.median(adds)
        out["add_k_all_s"] = [round(a, 3) for a in adds]
        t = time.perf_counter()
        page.locator('[data-testid="stSidebar"]').get_by_text("Retrieve", exact=True).click()
        page.get_by_text("Click a token.").wait_for()
        _idle(page)
        out["retrieve_page_with_index_build_s"] = time.perf_counter() - t
        clicks = []
        img = page.frame_locator(COORDS_FRAME).first.locator("img")
        for i in range(reps + 1):
            img.wait_for()
            t = time.perf_counter()
            x, y = 40 + 60 * i, 100 + 40 * i
            img.click(position={"x": x, "y": y})
            r, c = int(y / 448 * grid), int(x / 448 * grid)  # the app shows it 448 px wide
            page.get_by_text(f"cosine similarity to token ({r}, {c})").wait_for()
            page.get_by_text("Top 12 tokens").wait_for()
            _idle(page)
            if i:  # the first click also warms the page's image caches
                clicks.append(time.perf_counter() - t)
        out["token_click_s"] = statistics.median(clicks)
        out["token_click_all_s"] = [round(c, 3) for c in clicks]
    return out


def cold_times(app: str, ckpt: str, runs: Path, n: int) -> list[dict[str, float]]:
    """``n`` more cold starts, each on a fresh server."""
    starts = []
    for _ in range(n):
        with server(app, ckpt, runs) as url, browser_page() as page:
            starts.append(cold_start(page, url))
    return starts


def summary(starts: list[dict[str, float]]) -> dict:
    """Medians and every value of the cold starts."""
    return {
        **{f"{k}_median": round(statistics.median(s[k] for s in starts), 3) for k in starts[0]},
        **{f"{k}_all": [round(s[k], 3) for s in starts] for k in starts[0]},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--checkpoint", default="vits16",
        help="vits16 (random ViT-S/16), default (the bundled model) or a path",
    )  # fmt: skip
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cold", type=int, default=5, help="cold starts, each on a fresh server")
    ap.add_argument(
        "--app", default=str(ROOT / "app" / "serve.py"),
        help="what `streamlit run` starts: app/serve.py as `make app` does, or an app's main.py",
    )  # fmt: skip
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    ckpt = (
        str(vits16_export(tmp / "vits16.safetensors"))
        if args.checkpoint == "vits16"
        else str(DEFAULT_CHECKPOINT) if args.checkpoint == "default" else args.checkpoint
    )  # fmt: skip
    grid = int(first_page_settings(ckpt)["resolution"]) // load_encoder(ckpt).patch_size
    with server(args.app, ckpt, tmp / "runs") as url:
        app = browser_times(url, args.reps, grid)
    first = {k: app[k] for k in COLD_KEYS}
    cold = [first, *cold_times(args.app, ckpt, tmp / "runs", args.cold - 1)]
    base = engine_baseline(ckpt, args.reps)
    result = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "checkpoint": args.checkpoint,
        "app": args.app,
        "app_in_browser": {k: v if isinstance(v, list) else round(v, 3) for k, v in app.items()},
        "cold_starts": summary(cold),  # the first above, then each on a fresh server
        "engine_baseline": {k: round(v, 3) for k, v in base.items()},
        "imports_alone_s": round(import_floor(), 3),
    }
    print(json.dumps(result, indent=1))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
