"""The Streamlit app through AppTest: every page, with the real engine on a tiny model."""

from __future__ import annotations

import io
import json
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from mcssl.explore.concepts import K_CHOICES as KS
from mcssl.explore.concepts import cluster_mean_probs, top_concepts
from mcssl.explore.encoder import ACCEPTED, load_encoder
from mcssl.explore.features import FeatureExtractor, Settings
from mcssl.explore.pipeline import label_features
from mcssl.images import sample_photos

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
RES = 112


@pytest.fixture
def app(smoke_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(smoke_export))
    monkeypatch.setenv("MCSSL_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["res"] = RES  # small images keep the tests fast
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _captions(at: AppTest) -> list[str]:
    """Image captions, less the colour keys."""
    return [c for im in at.get("image") for c in im.captions if not c.startswith("colour ")]


def _features(smoke_export: Path, names: list[str]):
    """As the app computes them (its default precision: bf16 where the CPU has it)."""
    ex = FeatureExtractor(load_encoder(smoke_export), Settings(resolution=RES, precision="auto"))
    photos = sample_photos()
    return ex([photos[n] for n in names])


def test_explore_shows_figure1_rows_and_the_labels_match_the_engine(
    app: AppTest, smoke_export: Path
) -> None:
    _ok(app)
    names = app.multiselect(key="explore_images").value
    assert len(names) == 6
    caps = _captions(app)
    assert caps.count("k=2") == caps.count("k=3") == caps.count("k=4") == 6
    assert [c for c in caps if not c.startswith("k=")] == names
    got = app.session_state["explore_labels"]
    want = label_features(_features(smoke_export, names), (2, 3, 4), chain=KS)
    for n, w in zip(names, want, strict=True):
        for k in (2, 3, 4):
            assert np.array_equal(got[n][k], w[k])
            assert len(np.unique(got[n][k])) <= k
    assert app.get("download_button")[0].label.startswith("Download masks")

    app.multiselect(key="ks").set_value([3]).run()
    app.multiselect(key="explore_images").set_value(names[:2])
    app.toggle(key="cocluster").set_value(True).run()
    _ok(app)
    assert _captions(app) == [names[0], "k=3", names[1], "k=3"]
    co = label_features(_features(smoke_export, names[:2]), (3,), cocluster=True, chain=KS)
    for n, w in zip(names[:2], co, strict=True):
        assert np.array_equal(app.session_state["explore_labels"][n][3], w[3])


def test_uploads_bad_files_and_a_missing_checkpoint(app: AppTest, tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)).save(
        good, "PNG"
    )
    app.sidebar.radio(key="source").set_value("Upload").run()
    assert any("Upload one or more" in i.value for i in app.info)
    files = [("a.png", good.getvalue(), "image/png"), ("bad.jpg", b"not an image", "image/jpeg")]
    app.sidebar.get("file_uploader")[0].set_value(files).run()
    assert not app.exception
    assert [w.value for w in app.warning] == [
        "bad.jpg: cannot read image (not an image format Pillow can read)"
    ]
    assert _captions(app) == ["a.png", "k=2", "k=3", "k=4"]

    app.sidebar.get("file_uploader")[0].set_value(files + files).run()  # each file twice
    assert [w.value for w in app.warning] == [
        "bad.jpg: cannot read image (not an image format Pillow can read)",
        "a.png: uploaded more than once (used once)",
        "bad.jpg: uploaded more than once (used once)",
    ]
    assert _captions(app) == ["a.png", "k=2", "k=3", "k=4"]

    app.sidebar.radio(key="source").set_value("Folder").run()
    app.sidebar.text_input(key="folder").set_value(str(tmp_path / "nowhere")).run()
    assert not app.exception and len(app.error) == 1 and "nowhere" in app.error[0].value
    assert app.sidebar.select_slider(key="res").value == RES  # Settings stay visible

    app.sidebar.radio(key="source").set_value("Demo photos").run()
    app.sidebar.text_input(key="checkpoint_path").set_value(str(tmp_path / "none.pt")).run()
    assert not app.exception and len(app.error) == 1 and not app.sidebar.error
    assert "could not be loaded" in app.error[0].value and "none.pt" in app.error[0].value


def test_every_broken_checkpoint_is_one_message_and_the_page_keeps_working(
    app: AppTest, smoke_export: Path, tmp_path: Path
) -> None:
    from checkpoint_corpus import bad_checkpoints

    corpus = bad_checkpoints(tmp_path / "bad", smoke_export)
    for page in ("Explore", "Concepts", "Retrieve"):
        app.sidebar.radio(key="page").set_value(page)
        for name, path in corpus.items() if page == "Explore" else list(corpus.items())[:3]:
            app.sidebar.text_input(key="checkpoint_path").set_value(str(path)).run()
            assert not app.exception, (name, [e.value for e in app.exception])
            errors = [e.value for e in app.error] + [e.value for e in app.sidebar.error]
            assert len(errors) == 1, (name, errors)
            assert (
                errors[0].startswith("The model could not be loaded: ") and str(path) in errors[0]
            )
            assert ACCEPTED in errors[0] and "\n" not in errors[0] and "Traceback" not in errors[0]
            assert app.sidebar.select_slider(key="res").value == RES  # the sidebar is all there
        app.sidebar.text_input(key="checkpoint_path").set_value("").run()
        _ok(app)  # and the page works again


def test_explore_k_chips_sorted_stable_colours_and_clearing_every_k(app: AppTest) -> None:
    names = app.multiselect(key="explore_images").value
    before = {n: app.session_state["explore_labels"][n][4] for n in names}
    app.multiselect(key="ks").set_value([4, 2]).run()  # in the order a user adds them
    _ok(app)
    assert app.multiselect(key="ks").value == [2, 4]
    assert _captions(app)[:3] == [names[0], "k=2", "k=4"]
    for n in names:  # k = 4 keeps its colours when k = 3 goes
        assert np.array_equal(app.session_state["explore_labels"][n][4], before[n])
    app.multiselect(key="ks").set_value([]).run()
    _ok(app)
    assert any("Choose at least one k" in i.value for i in app.info)
    assert not any(c.startswith("k=") for c in _captions(app))  # no silent k = 2


def test_layer_is_bounded_by_the_model_and_picker_labels_are_distinct(
    app: AppTest, smoke_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    depth = load_encoder(smoke_run).depth
    layer = app.sidebar.number_input(key="layer")
    assert (layer.min, layer.max) == (-depth, depth - 1)
    import shutil

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    shutil.copy(smoke_run / "last.pt", run / "last.pt")
    shutil.copy(smoke_run.parent / "teacher.safetensors", run / "teacher.safetensors")
    app.run()
    options = app.sidebar.selectbox(key="checkpoint").options
    assert "run r1 · export" in options and "run r1 · last.pt" in options
    assert len(set(options)) == len(options)
    app.sidebar.selectbox(key="checkpoint").set_value(str(run)).run()
    _ok(app)


def test_concepts_bars_are_the_clusters_mean_probabilities(
    app: AppTest, smoke_export: Path
) -> None:
    app.sidebar.radio(key="page").set_value("Concepts").run()
    _ok(app)
    names = app.multiselect(key="concept_images").value
    assert len(names) == 3 and len(app.get("plotly_chart")) == 1
    app.selectbox(key=f"cluster_{names[1]}").set_value(1).run()
    _ok(app)
    feats = _features(smoke_export, names)
    labels = label_features(feats, (2,), chain=KS)
    rows = app.session_state["concept_rows"]
    for (label, top), name, f, lab in zip(rows, names, feats, labels, strict=True):
        c = 1 if name == names[1] else 0
        assert label.startswith(f"{name} · cluster {c} (")
        want = top_concepts(cluster_mean_probs(f.probs, lab[2].ravel(), 2)[c], 8)
        assert [i for i, _ in top] == [i for i, _ in want]
        # bf16 sums depend a little on the batch the image was in
        assert np.allclose([p for _, p in top], [p for _, p in want], atol=2e-4)
    caps = _captions(app)
    assert sum(c.startswith("argmax pseudo-concept per token") for c in caps) == 3
    layout = json.loads(app.get("plotly_chart")[0].proto.spec)["layout"]
    assert layout["xaxis"]["type"] == "category"  # "#129" is a name, not the number 129
    assert layout["xaxis"]["title"]["text"] and layout["yaxis"]["title"]["text"]
    assert layout["legend"]["y"] > 1  # above the plot, clear of the axis title


def test_retrieve_a_clicked_token_with_every_option(
    app: AppTest, smoke_export: Path, tmp_path: Path
) -> None:
    import streamlit as st

    st.cache_resource.clear()  # an index another test built would not be saved under tmp_path
    app.sidebar.radio(key="page").set_value("Retrieve").run()
    _ok(app)
    assert any(c == "Click a token." for c in [c.value for c in app.caption])
    app.selectbox(key="query_image").set_value("astronaut")
    app.session_state["token"] = ("astronaut", 3, 4)  # what a click on that token stores
    app.run()
    _ok(app)
    hits = app.session_state["hits"]
    assert len(hits) == 12 and hits[0][:3] == ("astronaut", 3, 4) and hits[0][3] == pytest.approx(1)
    assert all(a[3] >= b[3] for a, b in pairwise(hits))
    assert "cosine similarity to token (3, 4)" in _captions(app)

    app.checkbox(key="exclude_own").check()
    app.checkbox(key="one_per_image").check().run()
    hits = app.session_state["hits"]
    assert "astronaut" not in {h[0] for h in hits}
    assert len({h[0] for h in hits}) == len(hits) == 8  # one per other demo photo

    app.checkbox(key="exclude_own").uncheck()
    app.checkbox(key="one_per_image").uncheck()
    app.checkbox(key="same_concept").check().run()
    (f,) = _features(smoke_export, ["astronaut"])
    photos = sample_photos()
    ex = FeatureExtractor(load_encoder(smoke_export), Settings(resolution=RES, precision="auto"))
    concept = f.argmax[3 * f.grid[1] + 4]
    assert app.session_state["query_concept"][0] == concept
    for name, r, c, _ in app.session_state["hits"]:
        g = ex([photos[name]])[0]
        assert g.argmax[r * g.grid[1] + c] == concept
    assert list((tmp_path / "runs" / ".cache" / "index").glob("*/images.json"))  # kept on disk

    app.checkbox(key="same_concept").uncheck().run()
    path, r, c, _ = app.session_state["hits"][5]
    app.button(key="hit_5").click().run()  # "query from here" under a hit
    _ok(app)
    assert app.selectbox(key="query_image").value == path
    assert app.session_state["token"] == (path, r, c)
    assert app.session_state["hits"][0][:3] == (path, r, c)
    assert f"cosine similarity to token ({r}, {c})" in _captions(app)


def test_train_page_launches_watches_and_exports(app: AppTest, tmp_path: Path) -> None:
    app.sidebar.radio(key="page").set_value("Train").run()
    _ok(app)
    assert any("No training job yet" in i.value for i in app.info)
    app.selectbox(key="recipe").set_value("paper_vits16").run()
    assert any("GPU recipe" in w.value for w in app.warning)  # this test machine has no GPU
    assert any("1.6 years for ImageNet" in c.value for c in app.caption)
    app.selectbox(key="recipe").set_value("smoke").run()
    assert not app.warning and any("seconds on a CPU" in c.value for c in app.caption)
    app.text_area(key="overrides").set_value("optim.epochs=nope")
    app.button[0].click().run()  # the form's submit button
    assert "optim.epochs" in app.error[0].value  # a bad override is refused before launching
    out = tmp_path / "runs" / "smoke-app"
    app.text_input(key="train_out").set_value(str(out))
    app.text_area(key="overrides").set_value("optim.epochs=1")
    app.button[0].click().run()
    _ok(app)
    from mcssl.jobs import Jobs

    deadline = time.time() + 240
    while time.time() < deadline and Jobs(tmp_path / "runs").current().status != "finished":
        time.sleep(1)  # the export is written before the job says finished
    app.run()
    _ok(app)
    assert (out / "teacher.safetensors").exists()
    assert any("finished" in h.value for h in app.subheader)
    assert any("Exported" in s.value for s in app.success)
    assert app.text_area(key="overrides").value == "optim.epochs=1"  # what the user typed stays
    assert app.text_input(key="train_out").value == str(out)
    app.sidebar.radio(key="page").set_value("Explore").run()
    assert "run smoke-app · export" in app.sidebar.selectbox(key="checkpoint").options


def test_train_page_shows_a_collapse_banner_and_health_curves(app: AppTest, tmp_path: Path) -> None:
    import json

    from mcssl.jobs import Job, Jobs

    out = tmp_path / "runs" / "collapsed"
    out.mkdir(parents=True)
    rows = [
        {"step": s, "epoch": s / 10, "loss": 4.0, "images_per_s": 10.0, "concepts_in_use": 1.0,
         "collapse": "dominant", "concept_ari": 0.1, "concept_miou": 0.3}
        for s in (10, 20)
    ]  # fmt: skip
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Jobs(tmp_path / "runs")._write(Job(str(out), "smoke", status="finished", started=time.time()))
    app.sidebar.radio(key="page").set_value("Train").run()
    assert not app.exception
    assert any(
        "collapsed (dominant)" in w.value and "center_momentum" in w.value for w in app.warning
    )
    assert len(app.get("plotly_chart")) == 3  # losses, pseudo-concepts in use, concept score
