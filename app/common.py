"""Shared by the pages: the sidebar (model, images, settings), cached resources, errors.

The app has no maths of its own: everything it shows is computed by ``mcssl.explore``.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import warmstate
from auth import PathRefused, checked

from mcssl.explore.concepts import K_CHOICES
from mcssl.explore.encoder import (
    DEFAULT_CHECKPOINT,
    Encoder,
    EncoderError,
    arch_label,
    load_encoder,
)
from mcssl.explore.features import (
    FALLBACK,
    FeatureExtractor,
    ImageFeatures,
    Settings,
    facets_of,
)
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
    found = warmstate.STATE.found("encoder", spec, stamp)
    if found:
        return found
    enc = load_encoder(spec)
    freeze_heap()
    return enc


def freeze_heap() -> None:
    """Streamlit runs a full garbage collection after every script run (a k added, a token
    clicked), and with PyTorch, timm, scikit-learn and a model in memory that took 0.3-0.5 s
    here, holding the GIL before the page heard the run was over. What is alive now (modules,
    the model) stays alive: ``gc.freeze`` takes it out of every later collection."""
    gc.freeze()


@st.cache_resource(max_entries=8, show_spinner=False)
def extractor(
    spec: str,
    stamp: float,
    resolution: int,
    layer: int,
    precision: str = "auto",
    facet: str = "tokens",
) -> FeatureExtractor:
    """One per (model, settings), so its feature cache survives reruns (the warm-up's, with
    the demo photos' features, for the bundled model at its first-page settings)."""
    found = warmstate.STATE.found("extractor", spec, stamp, resolution, layer, precision, facet)
    if isinstance(found, FeatureExtractor):
        return found
    settings = Settings(resolution=resolution, layer=layer, precision=precision, facet=facet)
    return FeatureExtractor(encoder(spec, stamp), settings)


@st.cache_resource(show_spinner="Loading the demo photos…")
def demo_gallery() -> Gallery:
    return warmstate.STATE.found("gallery") or Gallery.demo()


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
    """k-means labels for every k of ``ks``, cached by ``key`` (model, images, settings);
    chained through every k choice so that a k's colours do not change when other ks are
    added or removed."""
    return label_features(_feats, ks, 0, cocluster, chain=KS)


def all_labels(ctx: Context, names: list[str], feats: list[ImageFeatures], cocluster: bool):
    """Labels for every k choice at once (a few ms of k-means each): picking ks is then free."""
    return labels(ctx.key(names, KS, cocluster), feats, KS, cocluster)


def warm(state: warmstate.State) -> None:
    """Run by the warm-up thread: what the first page (Explore, demo photos, bundled model,
    default settings) needs, under the keys the functions above look for."""
    spec = "default"
    stamp = _stamp(spec)
    state.stage = "Loading the model…"
    enc = load_encoder(spec)
    state.made[("encoder", spec, stamp)] = enc
    gallery = Gallery.demo()
    state.made[("gallery",)] = gallery
    first = {**SETTINGS, **{STORED[k]: v for k, v in enc.defaults.items()}}  # as _use_stored
    res, layer, facet, precision = first["res"], first["layer"], first["facet"], "auto"
    settings = Settings(resolution=res, layer=layer, precision=precision, facet=facet)
    ex = FeatureExtractor(enc, settings)
    state.made[("extractor", spec, stamp, res, layer, precision, facet)] = ex
    images = gallery.images[:DEMO_SHOWN]
    state.total = len(images)
    state.stage = f"Computing features ({ex.dtype_name}) of the demo photos"
    ex(images, lambda done, total: setattr(state, "done", done))


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


def checkpoint_label(choice: str) -> str:
    """Short and distinct: a run's export and its folder must not read the same."""
    if choice == "default":
        return "default (bundled)"
    p = Path(choice)
    if p.name == "teacher.safetensors":
        return f"run {p.parent.name} · export"
    if (p / "last.pt").exists():
        return f"run {p.name} · last.pt"
    return p.name


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
        """Features of the named images; a progress bar names what is computed."""
        images = [self.image(n) for n in names]
        todo = self.extractor.missing(images)
        if not todo:
            return self.extractor(images)
        what = f"Computing features ({self.extractor.dtype_name}) of {todo} image(s)"
        bar = st.progress(0.0, text=f"{what}: 0/{todo}")
        out = self.extractor(images, lambda d, t: bar.progress(d / t, text=f"{what}: {d}/{t}"))
        bar.empty()
        return out

    def image(self, name: str):
        return self.gallery.images[self.gallery.names.index(name)]

    def shown(self, name: str):
        """The image at display size (longer side <= SHOW_SIDE): overlays and heat-maps are
        drawn at this size, which keeps a rerun's encoding and transfer small."""
        return shrink(self.image(name), f"{self.gallery.digest}|{name}")


SHOW_SIDE = 448
DEMO_SHOWN = 6  # Explore shows the first 6 images at first


def token_at(click: dict, grid: tuple[int, int]) -> tuple[int, int]:
    """A click on a shown image (streamlit-image-coordinates) -> (row, col) of its token."""
    gh, gw = grid
    r = min(gh - 1, int(click["y"] / click["height"] * gh))
    c = min(gw - 1, int(click["x"] / click["width"] * gw))
    return r, c


@st.cache_resource(max_entries=512, show_spinner=False)
def _shrunk(_img, key: str):
    """Shared, not copied: shown images are never modified in place."""
    img = _img.copy()
    img.thumbnail((SHOW_SIDE, SHOW_SIDE))
    return img


def shrink(img, key: str | None = None):
    """``img`` at display size; ``key`` names its pixels (default: their digest)."""
    if max(img.size) <= SHOW_SIDE:
        return img
    from mcssl.explore.features import image_digest

    return _shrunk(img, key or image_digest(img))


def _model_sidebar() -> tuple[str, float] | None:
    st.sidebar.header("Model")
    choices = checkpoint_choices()
    picked = st.sidebar.selectbox(
        "Checkpoint", choices, key="checkpoint", format_func=checkpoint_label,
        help="the bundled model, files under checkpoints/ and the runs folder's runs",
    )  # fmt: skip
    typed = st.sidebar.text_input(
        "…or a path", key="checkpoint_path", placeholder="/path/to/ckpt",
        help="an mcssl export (.safetensors), a run folder or its last.pt, a reference MC-SSL /"
        " DINO / iBOT checkpoint or a timm ViT state dict",
    )  # fmt: skip
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


KS = K_CHOICES  # colours of a k do not depend on which other ks are shown (chained through all)
PAGE_SETTINGS = {"Explore": ("alpha", "smooth"), "Concepts": ("alpha", "smooth"), "Retrieve": ()}


SETTINGS = {
    "res": FALLBACK["resolution"], "layer": FALLBACK["layer"], "facet": FALLBACK["facet"],
    "fp32": False, "alpha": 0.5, "smooth": False, "ks": [2, 3, 4],
}  # fmt: skip
STORED = {"resolution": "res", "layer": "layer", "facet": "facet"}  # stored default -> widget
FACET_LABELS = {
    "tokens": "block output tokens", "keys": "attention keys",
    "keys+concepts": "keys + pseudo-concepts",
}  # fmt: skip


def keep(*keys: str, defaults: dict | None = None) -> None:
    """Widgets a page does not draw lose their value; re-assigning it keeps it for later.
    With ``defaults``, a missing key starts at its default: widgets keyed so are then made
    without a default of their own (Streamlit warns about both)."""
    defaults = defaults or {}
    for key in keys:
        if key in st.session_state or key in defaults:
            st.session_state[key] = st.session_state.get(key, defaults.get(key))


def _use_stored(model: tuple[str, float], stored: dict[str, int | str]) -> None:
    """On the first run and whenever another model (or a rewritten file) is loaded, the
    model's stored defaults (`mcssl eval defaults --write`) set their widgets: a newcomer sees
    the model's best settings; what the user changes afterwards stays."""
    if st.session_state.get("defaults_of") != model:
        st.session_state["defaults_of"] = model
        for name, value in stored.items():
            st.session_state[STORED[name]] = value


def _settings_sidebar(
    page: str, depth: int | None, stored: dict[str, int | str], facets: tuple[str, ...]
) -> tuple[int, int, str, str, float, bool]:
    """Only the settings that change what ``page`` shows (the others keep their values);
    ``facets``: those the model has."""
    st.sidebar.header("Settings")
    keep(*SETTINGS, defaults=SETTINGS)
    choices = sorted({*RESOLUTIONS, int(st.session_state["res"]), *stored_res(stored)})
    res = st.sidebar.select_slider("Resolution (shorter side)", choices, key="res")
    lo, hi = (-depth, depth - 1) if depth else (-1, -1)
    if not lo <= st.session_state.get("layer", -1) <= hi:  # another model: a layer it has
        st.session_state["layer"] = -1
    layer = st.sidebar.number_input(
        "Layer (-1 = last)", lo, hi, key="layer",
        help=f"block whose features are used: 0..{hi} from the input, -1..{lo} from the end",
    )  # fmt: skip
    if st.session_state.get("facet") not in facets:  # another model: one without a head
        st.session_state["facet"] = "tokens"
    facet = st.sidebar.radio(
        "Features", facets, key="facet", format_func=FACET_LABELS.get,
        horizontal=True, help="the block's output tokens; the keys of its self-attention "
        "(all heads), which dino-vit-features found best for co-segmentation; or those keys "
        "beside the patch's pseudo-concept probabilities, which are shared across images",
    )  # fmt: skip
    fp32 = st.sidebar.checkbox(
        "Full precision (fp32)", key="fp32",
        help="default: bf16 where the CPU/GPU computes it natively (about 2x faster, token "
        "features within cosine 0.99 of fp32); fp32 everywhere else",
    )  # fmt: skip
    alpha, smooth = 0.5, False
    if "alpha" in PAGE_SETTINGS.get(page, ()):
        alpha = st.sidebar.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="alpha")
        smooth = st.sidebar.checkbox("Smooth masks", key="smooth")
    precision = "fp32" if fp32 else "auto"
    return int(res), int(layer), str(facet), precision, float(alpha), bool(smooth)


def stored_res(stored: dict[str, int | str]) -> list[int]:
    return [int(stored["resolution"])] if "resolution" in stored else []


def with_context(page: str, render) -> None:
    """Draws the sidebar and runs ``render(ctx)``; called inside :func:`guarded`, so an
    unusable checkpoint or image source is one message and the page keeps working."""
    ctx = context(page)
    if ctx is not None:
        render(ctx)


def context(page: str = "Explore") -> Context | None:
    """Draws the sidebar; returns what the pages need, or None (one message is shown)."""
    model = _model_sidebar()  # None: a refused path, already said
    try:
        gallery, image_error = _image_sidebar(), None
    except (ImageError, PathRefused) as e:
        gallery, image_error = None, str(e)
    enc, model_error = None, None
    if model is not None:
        try:
            enc = encoder(*model)
        except EncoderError as e:
            model_error = str(e)
    if enc is not None and model is not None:
        _use_stored(model, enc.defaults)
    res, layer, facet, precision, alpha, smooth = _settings_sidebar(
        page, enc.depth if enc else None, enc.defaults if enc else {},
        facets_of(enc) if enc else ("tokens", "keys"),
    )  # fmt: skip
    if enc is None:
        if model_error is not None:
            st.error(f"The model could not be loaded: {model_error}")
        return None
    spec, stamp = model
    model_facts(enc)
    if image_error is not None:
        st.error(image_error)
        return None
    if gallery is None:
        return None
    for err in dict.fromkeys(gallery.errors):  # one warning per distinct problem
        st.warning(err)
    if not len(gallery):
        st.error("None of the images could be read.")
        return None
    ex = extractor(spec, stamp, res, layer, precision, facet)
    return Context(spec, ex, gallery, alpha, smooth)


def model_facts(enc: Encoder) -> None:
    """What the loaded model is, read from the weights (the config's timm name can say
    patch 16 while the recipe overrides it)."""
    info = enc.info
    facts = {
        "architecture": arch_label(info.get("arch", "?"), enc.patch_size),
        "patch": enc.patch_size,
        "depth (blocks)": enc.depth,
        "width": enc.backbone.embed_dim,
        "K (pseudo-concepts)": info.get("num_concepts", "-"),
        "steps": info.get("steps") or "-",
        "recipe": info.get("recipe") or "-",
        "format": info.get("format", "?"),
        "stored defaults": ", ".join(f"{k} {v}" for k, v in enc.defaults.items()) or "none",
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
