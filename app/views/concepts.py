"""Concepts: a k-means cluster in each of several images and the patch-concept head's mean
probabilities over its tokens (top-N pseudo-concepts, as in the paper's Figures 5-9), plus
each image's per-token argmax pseudo-concept map."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from common import Context, labels, token_at
from PIL import Image
from streamlit_image_coordinates import streamlit_image_coordinates

from mcssl.explore.concepts import cluster_mean_probs, top_concepts, upsample_labels
from mcssl.explore.render import PALETTE, id_colours, overlay


def clicked_cluster(grid: np.ndarray, click: dict | None) -> int | None:
    """The cluster under a click on the shown overlay (``click`` from image coordinates)."""
    return int(grid[token_at(click, grid.shape)]) if click else None


def bars(rows: list[tuple[str, np.ndarray]], top_n: int) -> go.Figure:
    """Grouped bars: the union of each selection's top-N concepts, one colour per image."""
    ids: list[int] = []
    for _, mean in rows:
        ids += [i for i, _ in top_concepts(mean, top_n) if i not in ids]
    fig = go.Figure()
    for j, (label, mean) in enumerate(rows):
        colour = "rgb({},{},{})".format(*PALETTE[j % len(PALETTE)])
        fig.add_bar(x=[f"#{i}" for i in ids], y=[float(mean[i]) for i in ids], name=label,
                    marker_color=colour)  # fmt: skip
    fig.update_layout(barmode="group", xaxis_title="pseudo-concept", height=360,
                      yaxis_title="mean probability over the cluster's tokens",
                      margin={"t": 20, "b": 40}, legend={"orientation": "h"})  # fmt: skip
    return fig


def render(ctx: Context) -> None:
    if not ctx.encoder.has_concepts:
        st.warning("This checkpoint has no patch-concept head: pseudo-concepts are unavailable.")
        return
    names = ctx.gallery.names
    chosen = st.multiselect("Images", names, names[: min(3, len(names))], key="concept_images")
    k = st.selectbox("k", ctx.ks, index=0, key="concept_k")
    top_n = st.slider("Top concepts per cluster", 3, 20, 8, key="top_n")
    if not chosen:
        st.info("Choose one or more images.")
        return
    feats = ctx.features(chosen)
    labs = labels(ctx.key(chosen, ctx.ks, False), feats, ctx.ks, False)
    rows = []
    cols = st.columns(len(chosen))
    for col, name, f, lab in zip(cols, chosen, feats, labs, strict=True):
        img, grid = ctx.shown(name), lab[k]
        with col:
            full = upsample_labels(grid, (img.height, img.width), ctx.smooth)
            shown = overlay(img, full, ctx.alpha)
            click = streamlit_image_coordinates(
                shown, width="stretch", key=f"cc_{name}", image_format="JPEG", jpeg_quality=90
            )
            picked = clicked_cluster(grid, click)
            key = f"cluster_{name}"
            if st.session_state.get(key, 0) >= k:  # k went down: the old choice is gone
                st.session_state[key] = 0
            if picked is not None and st.session_state.get(f"{key}_click") != click:
                st.session_state[f"{key}_click"] = click  # a new click picks its cluster
                st.session_state[key] = picked
            c = st.selectbox(f"Cluster in {name}", list(range(k)), key=key,
                             format_func=lambda i: f"cluster {i}")  # fmt: skip
            mean = cluster_mean_probs(f.probs, grid.ravel(), k)[c]
            rows.append((f"{name} · cluster {c}", mean))
            amap = Image.fromarray(id_colours(f.argmax.reshape(f.grid)))
            used = len(set(f.argmax))
            st.image(amap.resize(img.size, Image.Resampling.NEAREST), width="stretch",
                     caption=f"argmax pseudo-concept per token ({used} in use)")  # fmt: skip
    st.subheader("Mean pseudo-concept probabilities of the chosen clusters")
    st.plotly_chart(bars(rows, top_n), key="concept_bars")
    st.session_state["concept_rows"] = [(lab, top_concepts(m, top_n)) for lab, m in rows]
