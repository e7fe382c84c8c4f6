"""Explore: each image with its k-means concept overlays for every k (the paper's Figure 1),
per image or co-clustered across the selected images; downloads of masks, overlays, JSON."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import streamlit as st
from common import DEMO_SHOWN, KS, Context, all_labels
from PIL import Image

from mcssl.explore.concepts import cluster_mean_probs, top_concepts, upsample_labels
from mcssl.explore.render import legend, overlay

HELP = (
    "Each photo, then its tokens grouped by k-means into k clusters of similar tokens, for "
    "every k you pick (the paper's Figure 1). A colour is one cluster; colours are matched "
    "from one k to the next, so a region that stays together keeps its colour. Per image, "
    "colour 0 in one photo has nothing to do with colour 0 in another: turn on co-clustering "
    "to cluster the chosen photos together, so that a colour means the same concept in all."
)


@st.cache_data(max_entries=1024, show_spinner=False)
def _overlay_jpeg(key: str, k: int, alpha: float, smooth: bool, _img, _grid) -> bytes:
    """One overlay as JPEG bytes, cached by (labels key, k, settings): adding a k draws only
    the new column, and Streamlit sends unchanged bytes under the same URL."""
    full = upsample_labels(_grid, (_img.height, _img.width), smooth)
    buf = io.BytesIO()
    overlay(_img, full, alpha).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@st.cache_data(max_entries=256, show_spinner=False)
def _jpeg(_img, key: str) -> bytes:
    buf = io.BytesIO()
    _img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def overlays(ctx: Context, names: list[str], ks: tuple[int, ...], cocluster: bool):
    """-> per image at its own size: (image, {k: label grid}, {k: overlay}, {k: label map})
    (the downloads; the page draws display-size overlays)."""
    feats = ctx.features(names)
    if cocluster:
        labs = all_labels(ctx, names, feats, True)
    else:
        labs = [all_labels(ctx, [n], [f], False)[0] for n, f in zip(names, feats, strict=True)]
    labs = [{k: lab[k] for k in ks} for lab in labs]
    out = []
    for name, lab in zip(names, labs, strict=True):
        img = ctx.image(name)
        full = {k: upsample_labels(g, (img.height, img.width), ctx.smooth) for k, g in lab.items()}
        out.append((img, lab, {k: overlay(img, f, ctx.alpha) for k, f in full.items()}, full))
    return feats, out


def archive(ctx: Context, names: list[str], ks: tuple[int, ...], cocluster: bool) -> bytes:
    """A zip of overlays, label masks (pixel value = concept id) and concepts.json, at the
    images' own size."""
    feats, shown = overlays(ctx, names, ks, cocluster)
    buf = io.BytesIO()
    records = []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, f, (img, lab, ovs, full) in zip(names, feats, shown, strict=True):
            stem = name.rsplit(".", 1)[0].replace("/", "_")
            rec = {"image": name, "size": list(img.size), "grid": list(f.grid), "labels": {}}
            for k in lab:
                for kind, pic in (
                    ("overlay", ovs[k]),
                    ("mask", Image.fromarray(full[k].astype(np.uint8))),
                ):
                    b = io.BytesIO()
                    pic.save(b, "PNG")
                    z.writestr(f"{stem}_k{k}_{kind}.png", b.getvalue())
                rec["labels"][str(k)] = lab[k].tolist()
                if f.probs is not None:
                    means = cluster_mean_probs(f.probs, lab[k].ravel(), k)
                    rec.setdefault("top_concepts", {})[str(k)] = [top_concepts(m, 5) for m in means]
            records.append(rec)
        meta = {"checkpoint": ctx.spec, "checkpoint_digest": ctx.encoder.digest,
                "settings": {"k": list(ks), "resolution": ctx.extractor.settings.resolution,
                             "layer": ctx.extractor.settings.layer,
                             "facet": ctx.extractor.settings.facet, "cocluster": cocluster},
                "images": records}  # fmt: skip
        z.writestr("concepts.json", json.dumps(meta, indent=1))
    return buf.getvalue()


def _sort_ks() -> None:
    st.session_state["ks"] = sorted(st.session_state["ks"])  # chips in order, not as added


def render(ctx: Context) -> None:
    st.caption(HELP)
    _rows(ctx)


@st.fragment
def _rows(ctx: Context) -> None:
    """Changing the images, k or co-clustering reruns only this part of the page."""
    names = ctx.gallery.names
    top = st.columns([4, 2, 2])
    chosen = top[0].multiselect("Images", names, names[:DEMO_SHOWN], key="explore_images")
    ks = tuple(top[1].multiselect("k (clusters per image)", KS, key="ks", on_change=_sort_ks))
    cocluster = top[2].toggle(
        "Co-cluster these images", key="cocluster",
        help="one k-means over the chosen images: a colour is the same concept in every image",
    )  # fmt: skip
    if not ks:
        st.info("Choose at least one k (clusters per image) above.")
        return
    if not chosen:
        st.info("Choose one or more images.")
        return
    st.image(legend(max(ks), [f"cluster {i}" for i in range(max(ks))]), caption="colour key")
    if cocluster:  # one clustering of all chosen images: all features first
        feats = ctx.features(chosen)
        labs = all_labels(ctx, chosen, feats, True)
        group = {n: chosen for n in chosen}
    else:  # row by row: the first row shows while the next image is being encoded
        feats, labs, group = [], [], {n: [n] for n in chosen}
    todo = 0 if cocluster else ctx.extractor.missing([ctx.image(n) for n in chosen])
    bar = st.progress(0.0, text="Computing features…") if todo else None
    shown = {}
    for i, name in enumerate(chosen):
        if not cocluster:
            (f,) = ctx.extractor([ctx.image(name)])
            feats.append(f)
            labs += all_labels(ctx, [name], [f], False)
            if bar is not None:
                what = f"Computing features ({ctx.extractor.dtype_name})"
                bar.progress((i + 1) / len(chosen), text=f"{what}: {i + 1}/{len(chosen)} images")
        img, lab = ctx.shown(name), {k: labs[i][k] for k in ks}
        shown[name] = lab
        key = ctx.key(group[name], cocluster)
        cols = st.columns(1 + len(ks))
        cols[0].image(_jpeg(img, ctx.key([name])), caption=name, width="stretch")
        for col, k in zip(cols[1:], ks, strict=True):
            jpeg = _overlay_jpeg(f"{key}|{name}", k, ctx.alpha, ctx.smooth, img, lab[k])
            col.image(jpeg, caption=f"k={k}", width="stretch")
    if bar is not None:
        bar.empty()
    st.session_state["explore_labels"] = shown
    st.download_button(
        "Download masks, overlays and JSON (.zip)",
        lambda: archive(ctx, chosen, ks, cocluster),  # built only when clicked
        file_name="mcssl_concepts.zip",
        mime="application/zip",
        key="download",
    )
