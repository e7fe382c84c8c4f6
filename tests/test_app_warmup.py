"""The engine's warm-up (app/warmup.py): started before the first page, it loads the bundled
model and encodes the first demo photos into the very caches the page then uses, so the
page encodes nothing itself (counted, not timed); a failing warm-up leaves the page working."""

from __future__ import annotations

import gc
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mcssl.checkpoint import store_defaults

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app" / "main.py")
sys.path.insert(0, str(ROOT / "app"))  # the app's modules, as app/main.py imports them

import common  # noqa: E402
import warmstate  # noqa: E402
import warmup  # noqa: E402


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[warmstate.State]:
    """A warm-up not started yet, and no model, photos or extractor cached from other tests."""
    monkeypatch.setenv("MCSSL_RUNS", str(tmp_path / "runs"))
    fresh = warmstate.State()
    monkeypatch.setattr(warmstate, "STATE", fresh)
    for cached in (common.encoder, common.extractor, common.demo_gallery):
        cached.clear()
    gc.unfreeze()
    yield fresh
    gc.unfreeze()  # the test process collects as before


@pytest.mark.parametrize(
    "stored", [{}, {"resolution": 48, "layer": 0, "facet": "keys"}], ids=["plain", "stored"]
)
def test_the_page_uses_what_the_warm_up_made(
    state: warmstate.State,
    smoke_export: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stored: dict,
) -> None:
    """Also for a model with stored defaults: the warm-up encodes at the settings the first
    page will use (the stored ones), else its work is wasted."""
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(smoke_export, ckpt)
    if stored:
        store_defaults(ckpt, stored)
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(ckpt))
    assert warmup.start() is state
    assert state.finished.wait(300)
    stamp = common._stamp("default")
    first = {"resolution": 224, "layer": -1, "facet": "tokens", **stored}
    key = (first["resolution"], first["layer"], "auto", first["facet"])
    ex = state.made[("extractor", "default", stamp, *key)]
    assert ex.encoded == common.DEMO_SHOWN == 6  # the first 6 demo photos, by the warm-up
    # the engine's objects are out of the full collection Streamlit runs after every rerun
    assert len(gc.get_objects()) < 0.2 * gc.get_freeze_count()

    at = AppTest.from_file(APP, default_timeout=180).run()  # Explore at the default settings
    assert not at.exception and not at.error
    caps = [c for im in at.get("image") for c in im.captions]
    assert caps.count("k=4") == 6
    assert common.extractor("default", stamp, *key) is ex  # the page's extractor
    assert ex.encoded == 6  # ... whose cache held every photo: the page encoded none
    assert common.demo_gallery() is state.made[("gallery",)]


def test_a_failed_warm_up_leaves_the_page_working(
    state: warmstate.State, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "gone.safetensors"
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(missing))
    warmup.start()
    assert state.finished.wait(300)
    assert not state.made  # it stopped at the model, and said so in the log

    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"The model could not be loaded: the bundled default checkpoint {missing} is missing; "
        "pass a checkpoint path (an export, a run folder or a .pt file)"
    ]


def test_streamlits_repl_check_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit's once-per-process REPL check walks the stack with inspect (0.3-0.9 s of the
    first page while the warm-up imports); starting the warm-up marks it done. Fails when a
    Streamlit upgrade renames the private flag, so that the cost comes back unnoticed."""
    import streamlit.delta_generator as dg
    import streamlit.env_util as env_util

    asked = []
    monkeypatch.setattr(env_util, "is_repl", lambda: asked.append(1) or False)
    monkeypatch.setattr(dg, "_use_warning_has_been_displayed", False)
    warmup._skip_repl_check()
    dg._maybe_print_use_warning()
    assert asked == []
