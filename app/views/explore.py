"""Explore: each image with its k-means concept overlays for every k (the paper's Figure 1),
per image or co-clustered across the selected images; downloads of masks, overlays, JSON."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import streamlit as st
from common import Context, labels
from PIL import Image

from mcssl.explore.concepts import cluster_mean_probs, top_concepts, upsample_labels
from mcssl.explore.render import overlay


def overlays(ctx: Context, names: list[str], cocluster: bool, full_size: bool = False):
    """-> per image: (image, {k: label grid}, {k: overlay}, {k: label map at image size}),
    at display size unless ``full_size`` (the downloads)."""
    feats = ctx.features(names)
    labs = labels(ctx.key(names, ctx.ks, cocluster), feats, ctx.ks, cocluster)
    out = []
    for name, lab in zip(names, labs, strict=True):
        img = ctx.image(name) if full_size else ctx.shown(name)
        full = {k: upsample_labels(g, (img.height, img.width), ctx.smooth) for k, g in lab.items()}
        out.append((img, lab, {k: overlay(img, f, ctx.alpha) for k, f in full.items()}, full))
    return feats, out


def archive(ctx: Context, names: list[str], cocluster: bool) -> bytes:
    """A zip of overlays, label masks (pixel value = concept id) and concepts.json, at the
    images' own size."""
    feats, shown = overlays(ctx, names, cocluster, full_size=True)
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
                "settings": {"k": list(ctx.ks), "resolution": ctx.extractor.settings.resolution,
                             "layer": ctx.extractor.settings.layer, "cocluster": cocluster},
                "images": records}  # fmt: skip
        z.writestr("concepts.json", json.dumps(meta, indent=1))
    return buf.getvalue()


def render(ctx: Context) -> None:
    names = ctx.gallery.names
    chosen = st.multiselect("Images", names, names[: min(6, len(names))], key="explore_images")
    cocluster = st.toggle(
        "Co-cluster across these images (a colour is the same concept in every image)",
        key="cocluster",
    )
    if not chosen:
        st.info("Choose one or more images.")
        return
    _, shown = overlays(ctx, chosen, cocluster)
    st.session_state["explore_labels"] = {
        n: lab for n, (_, lab, _, _) in zip(chosen, shown, strict=True)
    }
    for name, (img, _, ovs, _) in zip(chosen, shown, strict=True):
        cols = st.columns(1 + len(ovs))
        cols[0].image(img, caption=name, width="stretch", output_format="JPEG")
        for col, (k, ov) in zip(cols[1:], ovs.items(), strict=True):
            col.image(ov, caption=f"k={k}", width="stretch", output_format="JPEG")
    st.download_button(
        "Download masks, overlays and JSON (.zip)",
        lambda: archive(ctx, chosen, cocluster),  # built only when clicked
        file_name="mcssl_concepts.zip",
        mime="application/zip",
        key="download",
    )
