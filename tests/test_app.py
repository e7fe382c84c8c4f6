"""The Streamlit app through AppTest: every page, with the real engine on a tiny model."""

from __future__ import annotations

import io
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from mcssl.explore.concepts import cluster_mean_probs, top_concepts
from mcssl.explore.encoder import load_encoder
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
    return [c for im in at.get("image") for c in im.captions]


def _features(smoke_export: Path, names: list[str]):
    ex = FeatureExtractor(load_encoder(smoke_export), Settings(resolution=RES))
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
    want = label_features(_features(smoke_export, names), (2, 3, 4))
    for n, w in zip(names, want, strict=True):
        for k in (2, 3, 4):
            assert np.array_equal(got[n][k], w[k])
            assert len(np.unique(got[n][k])) <= k
    assert app.get("download_button")[0].label.startswith("Download masks")

    app.sidebar.multiselect(key="ks").set_value([3]).run()
    app.multiselect(key="explore_images").set_value(names[:2])
    app.toggle(key="cocluster").set_value(True).run()
    _ok(app)
    assert _captions(app) == [names[0], "k=3", names[1], "k=3"]
    co = label_features(_features(smoke_export, names[:2]), (3,), cocluster=True)
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
        "bad.jpg: not a readable image (UnidentifiedImageError)"
    ]
    assert _captions(app) == ["a.png", "k=2", "k=3", "k=4"]

    app.sidebar.radio(key="source").set_value("Folder").run()
    app.sidebar.text_input(key="folder").set_value(str(tmp_path / "nowhere")).run()
    assert not app.exception and "nowhere" in app.error[0].value

    app.sidebar.radio(key="source").set_value("Demo photos").run()
    app.sidebar.text_input(key="checkpoint_path").set_value(str(tmp_path / "none.pt")).run()
    assert not app.exception
    assert "could not be loaded" in app.error[0].value and "none.pt" in app.error[0].value


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
    labels = label_features(feats, (2, 3, 4))
    rows = app.session_state["concept_rows"]
    for (label, top), name, f, lab in zip(rows, names, feats, labels, strict=True):
        c = 1 if name == names[1] else 0
        assert label == f"{name} · cluster {c}"
        want = top_concepts(cluster_mean_probs(f.probs, lab[2].ravel(), 2)[c], 8)
        assert [i for i, _ in top] == [i for i, _ in want]
        assert np.allclose([p for _, p in top], [p for _, p in want], atol=1e-6)
    caps = _captions(app)
    assert sum(c.startswith("argmax pseudo-concept per token") for c in caps) == 3


def test_retrieve_a_clicked_token_with_every_option(
    app: AppTest, smoke_export: Path, tmp_path: Path
) -> None:
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
    ex = FeatureExtractor(load_encoder(smoke_export), Settings(resolution=RES))
    concept = f.argmax[3 * f.grid[1] + 4]
    for name, r, c, _ in app.session_state["hits"]:
        g = ex([photos[name]])[0]
        assert g.argmax[r * g.grid[1] + c] == concept
    assert list((tmp_path / "runs" / ".cache" / "index").glob("*/images.json"))  # kept on disk


def test_train_page_launches_watches_and_exports(app: AppTest, tmp_path: Path) -> None:
    app.sidebar.radio(key="page").set_value("Train").run()
    _ok(app)
    assert any("No training job yet" in i.value for i in app.info)
    app.text_area(key="overrides").set_value("optim.epochs=nope")
    app.button[0].click().run()  # the form's submit button
    assert "optim.epochs" in app.error[0].value  # a bad override is refused before launching
    out = tmp_path / "runs" / "smoke-app"
    app.text_input(key="train_out").set_value(str(out))
    app.text_area(key="overrides").set_value("optim.epochs=1")
    app.button[0].click().run()
    _ok(app)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "teacher.safetensors").exists():
        time.sleep(1)
    time.sleep(2)
    app.run()
    _ok(app)
    assert (out / "teacher.safetensors").exists()
    assert any("finished" in h.value for h in app.subheader)
    assert any("Exported" in s.value for s in app.success)
    app.sidebar.radio(key="page").set_value("Explore").run()
    assert str(out / "teacher.safetensors") in app.sidebar.selectbox(key="checkpoint").options


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
