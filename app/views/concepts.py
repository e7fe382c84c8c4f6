"""Concepts: a k-means cluster in each of several images and the patch-concept head's mean
probabilities over its tokens (top-N pseudo-concepts, as in the paper's Figures 5-9), plus
each image's per-token argmax pseudo-concept map."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from common import KS, Context, all_labels, token_at
from PIL import Image
from streamlit_image_coordinates import streamlit_image_coordinates

from mcssl.explore.concepts import cluster_mean_probs, top_concepts, upsample_labels
from mcssl.explore.render import PALETTE, id_colours, legend, overlay

PATTERNS = (
    "",
    "/",
    "x",
    ".",
    "\\",
    "+",
    "-",
    "|",
)  # tells images apart when clusters share a colour
HELP = (
    "Click a region of an image to pick its k-means cluster (or use the box under it). The "
    "bars are the patch-concept head's mean probabilities over the picked cluster's tokens: "
    "bar colour = the cluster's overlay colour, hatching = the image. Under each image, "
    "every token's most probable pseudo-concept: one colour per pseudo-concept id, the same "
    "colour as the square beside that id under the bars."
)


def rgb(colour: tuple[int, int, int]) -> str:
    return "rgb({},{},{})".format(*colour)


def clicked_cluster(grid: np.ndarray, click: dict | None) -> int | None:
    """The cluster under a click on the shown overlay (``click`` from image coordinates)."""
    return int(grid[token_at(click, grid.shape)]) if click else None


def bars(rows: list[tuple[str, int, np.ndarray]], top_n: int) -> go.Figure:
    """Grouped bars on a categorical axis of pseudo-concept ids (the union of each
    selection's top-N): one trace per (image, cluster), coloured as the cluster's overlay,
    hatched per image; each id's tick has a square in its argmax-map colour."""
    ids: list[int] = []
    for _, _, mean in rows:
        ids += [i for i, _ in top_concepts(mean, top_n) if i not in ids]
    ticks = [f"#{i}" for i in ids]
    squares = [rgb(tuple(c)) for c in id_colours(np.array(ids, dtype=np.int64))]
    fig = go.Figure()
    for j, (label, cluster, mean) in enumerate(rows):
        marker = {
            "color": rgb(PALETTE[cluster % len(PALETTE)]),
            "line": {"color": "#333", "width": 1},
            "pattern": {
                "shape": PATTERNS[j % len(PATTERNS)],
                "fgcolor": "#333",
                "fillmode": "overlay",
                "solidity": 0.25,
            },  # hatch over the colour
        }
        fig.add_bar(x=ticks, y=[float(mean[i]) for i in ids], name=label, marker=marker)
    text = [f'<span style="color:{c}">■</span> {t}' for c, t in zip(squares, ticks, strict=True)]
    fig.update_xaxes(
        type="category", title="pseudo-concept id (■ = its colour in the argmax maps)",
        tickmode="array", tickvals=ticks, ticktext=text,
    )  # fmt: skip
    fig.update_yaxes(title="mean probability over the cluster's tokens", rangemode="tozero")
    fig.update_layout(
        barmode="group", height=420, margin={"t": 70, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "title": None},
    )  # fmt: skip
    return fig


def render(ctx: Context) -> None:
    if not ctx.encoder.has_concepts:
        st.warning("This checkpoint has no patch-concept head: pseudo-concepts are unavailable.")
        return
    st.caption(HELP)
    _body(ctx)


@st.fragment
def _body(ctx: Context) -> None:
    """Picking images, k, a cluster or N reruns only this part of the page."""
    names = ctx.gallery.names
    top = st.columns([4, 1, 2])
    chosen = top[0].multiselect("Images", names, names[: min(3, len(names))], key="concept_images")
    k = top[1].selectbox("k", KS, index=0, key="concept_k")
    top_n = top[2].slider("Top concepts per cluster", 3, 20, 8, key="top_n")
    if not chosen:
        st.info("Choose one or more images.")
        return
    feats = ctx.features(chosen)
    st.image(legend(k, [f"cluster {i}" for i in range(k)]), caption="colour key (overlays, bars)")
    rows = []
    cols = st.columns(len(chosen))
    for j, (col, name, f) in enumerate(zip(cols, chosen, feats, strict=True)):
        (lab,) = all_labels(ctx, [name], [f], False)
        img, grid = ctx.shown(name), lab[k]
        with col:
            key = f"cluster_{name}"
            if st.session_state.get(key, 0) >= k:  # k went down: the old choice is gone
                st.session_state[key] = 0
            click = st.session_state.get(f"cc_{name}")  # read before drawing: no second run
            picked = clicked_cluster(grid, click)
            if picked is not None and st.session_state.get(f"{key}_click") != click:
                st.session_state[f"{key}_click"] = click  # a new click picks its cluster
                st.session_state[key] = picked
            full = upsample_labels(grid, (img.height, img.width), ctx.smooth)
            shown = overlay(img, full, ctx.alpha, highlight=st.session_state.get(key, 0))
            streamlit_image_coordinates(
                shown, width="stretch", key=f"cc_{name}", image_format="JPEG", jpeg_quality=90
            )
            c = st.selectbox(f"Cluster in {name}", list(range(k)), key=key,
                             format_func=lambda i: f"cluster {i}")  # fmt: skip
            mean = cluster_mean_probs(f.probs, grid.ravel(), k)[c]
            hatch = PATTERNS[j % len(PATTERNS)] or "plain"
            rows.append((f"{name} · cluster {c} ({hatch})", c, mean))
            amap = Image.fromarray(id_colours(f.argmax.reshape(f.grid)))
            used = len(set(f.argmax))
            st.image(amap.resize(img.size, Image.Resampling.NEAREST), width="stretch",
                     caption=f"argmax pseudo-concept per token ({used} ids in use)")  # fmt: skip
    st.subheader("Mean pseudo-concept probabilities of the chosen clusters")
    st.plotly_chart(bars(rows, top_n), key="concept_bars")
    st.session_state["concept_rows"] = [(lab, top_concepts(m, top_n)) for lab, _, m in rows]
