"""Shared by the pages: the sidebar (model, images, settings), cached resources, errors.

The app has no maths of its own: everything it shows is computed by ``mcssl.explore``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from auth import PathRefused, checked

from mcssl.explore.encoder import DEFAULT_CHECKPOINT, Encoder, EncoderError, load_encoder
from mcssl.explore.features import FeatureExtractor, ImageFeatures, Settings
from mcssl.explore.gallery import Gallery
from mcssl.explore.pipeline import label_features
from mcssl.images import ImageError

log = logging.getLogger("mcssl.app")
ROOT = Path(__file__).resolve().parents[1]
USER_ERRORS = (EncoderError, ImageError, ValueError, OSError)
RESOLUTIONS = (112, 160, 224, 320, 448)


def runs_dir() -> Path:
    """Where training runs (and cached indexes) live: $MCSSL_RUNS or ./runs."""
    return Path(os.environ.get("MCSSL_RUNS", "runs")).expanduser().resolve()


# ---- cached resources -------------------------------------------------------------------
@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def encoder(spec: str, stamp: float) -> Encoder:
    """``stamp`` (the file's mtime) makes a re-exported checkpoint load again."""
    return load_encoder(spec)


@st.cache_resource(max_entries=8)
def extractor(spec: str, stamp: float, resolution: int, layer: int) -> FeatureExtractor:
    """One per (model, settings), so its feature cache survives reruns."""
    return FeatureExtractor(encoder(spec, stamp), Settings(resolution=resolution, layer=layer))


@st.cache_resource(show_spinner="Loading the demo photos…")
def demo_gallery() -> Gallery:
    return Gallery.demo()


@st.cache_resource(max_entries=4, show_spinner="Reading the folder…")
def folder_gallery(path: str, stamp: float) -> Gallery:
    return Gallery.from_folder(path)


@st.cache_resource(max_entries=4, show_spinner="Reading the uploads…")
def upload_gallery(key: str, _files: tuple[tuple[str, bytes], ...]) -> Gallery:
    return Gallery.from_uploads(list(_files))


@st.cache_data(max_entries=64, show_spinner=False)
def labels(
    key: str, _feats: list[ImageFeatures], ks: tuple[int, ...], cocluster: bool
) -> list[dict[int, np.ndarray]]:
    """k-means labels, cached by ``key`` (model, images, settings)."""
    return label_features(_feats, ks, 0, cocluster)


# ---- sidebar ------------------------------------------------------------------------------
def checkpoint_choices() -> list[str]:
    """default, everything under checkpoints/ (and $MCSSL_CHECKPOINTS), exports and run
    folders under the runs folder."""
    found = ["default"]
    for folder in (ROOT / "checkpoints", os.environ.get("MCSSL_CHECKPOINTS")):
        if folder:
            found += [str(p) for p in sorted(Path(folder).glob("*.safetensors"))]
    runs = runs_dir()
    if runs.is_dir():
        found += [str(p) for p in sorted(runs.glob("*/teacher.safetensors"))]
        found += [str(p.parent) for p in sorted(runs.glob("*/last.pt"))]
    default_file = str(DEFAULT_CHECKPOINT)
    return [c for c in dict.fromkeys(found) if c != default_file]


def _stamp(spec: str) -> float:
    path = Path(os.environ.get("MCSSL_DEFAULT_CHECKPOINT", DEFAULT_CHECKPOINT))
    path = path if spec == "default" else Path(spec)
    target = path / "last.pt" if path.is_dir() else path
    return target.stat().st_mtime if target.exists() else 0.0


@dataclass
class Context:
    spec: str
    extractor: FeatureExtractor
    gallery: Gallery
    ks: tuple[int, ...]
    alpha: float
    smooth: bool

    @property
    def encoder(self) -> Encoder:
        return self.extractor.encoder

    def key(self, names: list[str], *extra: object) -> str:
        """Cache key of a computation on the named images with the current settings."""
        h = hashlib.blake2b(digest_size=12)
        h.update(f"{self.encoder.digest}|{self.extractor.settings}|{self.gallery.digest}".encode())
        h.update(repr((names, extra)).encode())
        return h.hexdigest()

    def features(self, names: list[str]) -> list[ImageFeatures]:
        idx = [self.gallery.names.index(n) for n in names]
        return self.extractor([self.gallery.images[i] for i in idx])

    def image(self, name: str):
        return self.gallery.images[self.gallery.names.index(name)]

    def shown(self, name: str):
        """The image at display size (longer side <= SHOW_SIDE): overlays and heat-maps are
        drawn at this size, which keeps a rerun's encoding and transfer small."""
        return shrink(self.image(name))


SHOW_SIDE = 448


def token_at(click: dict, grid: tuple[int, int]) -> tuple[int, int]:
    """A click on a shown image (streamlit-image-coordinates) -> (row, col) of its token."""
    gh, gw = grid
    r = min(gh - 1, int(click["y"] / click["height"] * gh))
    c = min(gw - 1, int(click["x"] / click["width"] * gw))
    return r, c


@st.cache_data(max_entries=256, show_spinner=False)
def _shrunk(_img, digest: str):
    img = _img.copy()
    img.thumbnail((SHOW_SIDE, SHOW_SIDE))
    return img


def shrink(img):
    from mcssl.explore.features import image_digest

    return _shrunk(img, image_digest(img)) if max(img.size) > SHOW_SIDE else img


def _model_sidebar() -> tuple[str, float] | None:
    st.sidebar.header("Model")
    choices = checkpoint_choices()
    picked = st.sidebar.selectbox("Checkpoint", choices, key="checkpoint")
    typed = st.sidebar.text_input("…or a path", key="checkpoint_path", placeholder="/path/to/ckpt")
    spec = typed.strip() or picked
    if typed.strip() not in ("", "default"):  # the bundled checkpoint is always allowed
        try:
            spec = str(checked(spec))
        except PathRefused as e:
            st.error(str(e))
            return None
    return spec, _stamp(spec)


def _image_sidebar() -> Gallery | None:
    st.sidebar.header("Images")
    source = st.sidebar.radio("Source", ["Demo photos", "Folder", "Upload"], key="source")
    if source == "Demo photos":
        return demo_gallery()
    if source == "Folder":
        path = st.sidebar.text_input("Folder", key="folder", placeholder="/data/images").strip()
        if not path:
            st.info("Type a folder path in the sidebar.")
            return None
        p = checked(path)
        return folder_gallery(str(p), p.stat().st_mtime if p.exists() else 0.0)
    files = st.sidebar.file_uploader(
        "Images", accept_multiple_files=True, key="uploads", type=None, help="PNG, JPEG, …"
    )
    if not files:
        st.info("Upload one or more images in the sidebar.")
        return None
    pairs = tuple((f.name, f.getvalue()) for f in files)
    key = hashlib.blake2b(b"".join(n.encode() + d for n, d in pairs), digest_size=12).hexdigest()
    return upload_gallery(key, pairs)


def _settings_sidebar() -> tuple[tuple[int, ...], int, int, float, bool]:
    st.sidebar.header("Settings")
    ks = st.sidebar.multiselect("k (clusters per image)", [2, 3, 4, 5, 6, 8], [2, 3, 4], key="ks")
    res = st.sidebar.select_slider("Resolution (shorter side)", RESOLUTIONS, 224, key="res")
    layer = st.sidebar.number_input("Layer (-1 = last)", -12, 11, -1, key="layer")
    alpha = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
    smooth = st.sidebar.checkbox("Smooth masks", False, key="smooth")
    return tuple(sorted(ks)) or (2,), int(res), int(layer), float(alpha), bool(smooth)


def context() -> Context | None:
    """Draws the sidebar; returns what the pages need, or None (a message is shown)."""
    model = _model_sidebar()
    try:
        gallery = _image_sidebar()
    except (ImageError, PathRefused) as e:
        st.error(str(e))
        return None
    ks, res, layer, alpha, smooth = _settings_sidebar()
    if model is None:
        return None
    spec, stamp = model
    try:
        ex = extractor(spec, stamp, res, layer)
    except EncoderError as e:
        st.sidebar.error(str(e))
        st.error(f"The model could not be loaded: {e}")
        return None
    model_facts(ex.encoder)
    if gallery is None:
        return None
    for err in gallery.errors:
        st.warning(err)
    if not len(gallery):
        st.error("None of the images could be read.")
        return None
    return Context(spec, ex, gallery, ks, alpha, smooth)


def model_facts(enc: Encoder) -> None:
    info = enc.info
    facts = {
        "architecture": info.get("arch", "?"),
        "patch": info.get("patch_size", "?"),
        "K (pseudo-concepts)": info.get("num_concepts", "-"),
        "steps": info.get("steps") or "-",
        "recipe": info.get("recipe") or "-",
        "format": info.get("format", "?"),
    }
    with st.sidebar.expander("Model facts", expanded=False):
        st.table({"": list(facts), "value": [str(v) for v in facts.values()]})


def guarded(page) -> None:
    """Runs a page; a user error is one line on the page, anything else is logged."""
    try:
        page()
    except USER_ERRORS as e:
        st.error(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except Exception as e:  # noqa: BLE001 (the app must keep running)
        log.exception("page failed")
        st.error(f"Something went wrong ({type(e).__name__}); details are in the server log.")
