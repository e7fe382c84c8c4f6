"""Retrieve: click a token; see its similarity to every token of the image and the most
similar tokens across the gallery (exact FAISS index, cached on disk per model + gallery)."""

from __future__ import annotations

import streamlit as st
from common import SHOW_SIDE, Context, runs_dir, token_at
from streamlit_image_coordinates import streamlit_image_coordinates

from mcssl.explore.concepts import token_similarity
from mcssl.explore.gallery import gallery_index
from mcssl.explore.index import TokenIndex
from mcssl.explore.render import colour_scale, draw_token_box, heatmap, token_crop

SHOWN_WIDTH = SHOW_SIDE  # the shown images are at most this size


@st.cache_resource
def _store() -> dict[str, TokenIndex]:
    """Indexes shared by all sessions (the on-disk cache makes a restart cheap too)."""
    return {}


def get_index(ctx: Context, key: str) -> TokenIndex:
    store = _store()
    if key not in store:
        n = len(ctx.gallery)
        what = f"Indexing the gallery's tokens ({ctx.extractor.dtype_name})"
        bar = st.progress(0.0, text=f"{what}: 0/{n} images")
        store[key] = gallery_index(
            ctx.extractor, ctx.gallery, runs_dir() / ".cache" / "index",
            lambda f: bar.progress(f, text=f"{what}: {round(f * n)}/{n} images"),
        )  # fmt: skip
        bar.empty()
        while len(store) > 4:
            store.pop(next(iter(store)))
    return store[key]


HELP = (
    "Click a token of the query image: the heat-map shows its cosine similarity to every "
    "token of that image, the grid below the most similar tokens across the gallery. Click "
    "“query from here” under a hit to make it the query."
)


def _query_from(name: str, row: int, col: int) -> None:
    """A hit's button: that token becomes the query (runs before the rerun)."""
    st.session_state["query_image"] = name
    st.session_state["token"] = (name, row, col)


def render(ctx: Context) -> None:
    st.caption(HELP)
    names = ctx.gallery.names
    index = get_index(ctx, ctx.key(names, "index"))
    _body(ctx, index)


@st.fragment
def _body(ctx: Context, index: TokenIndex) -> None:
    """A click, a hit's button or an option reruns only this part of the page."""
    names = ctx.gallery.names
    name = st.selectbox("Query image", names, key="query_image")
    opts = st.columns(4)
    top = opts[0].number_input("Results", 1, 100, 12, key="top")
    same = opts[1].checkbox("Same pseudo-concept only", key="same_concept",
                            disabled=not ctx.encoder.has_concepts,
                            help="only tokens whose most probable pseudo-concept is the "
                            "query token's")  # fmt: skip
    exclude = opts[2].checkbox("Exclude own image", key="exclude_own")
    one = opts[3].checkbox("One hit per image", key="one_per_image")
    img = ctx.shown(name)
    (f,) = ctx.features([name])
    click = st.session_state.get("token_click")  # read before drawing: no second run
    if click and st.session_state.get("last_click") != click:
        st.session_state["last_click"] = click
        st.session_state["token"] = (name, *token_at(click, f.grid))
    token = st.session_state.get("token")
    left, right = st.columns(2)
    with left:
        shown = img
        if token and token[0] == name:
            th, tw = img.height / f.grid[0], img.width / f.grid[1]
            shown = draw_token_box(img, token[1], token[2], th, tw, width=3)
        streamlit_image_coordinates(
            shown, width=SHOWN_WIDTH, key="token_click", image_format="JPEG", jpeg_quality=90
        )
        st.caption("Click a token.")
    if not token or token[0] != name:
        return
    _, row, col = token
    n = row * f.grid[1] + col
    with right:
        sim = token_similarity(f.tokens, n).reshape(f.grid)
        st.image(heatmap(img, sim), width=SHOWN_WIDTH, output_format="JPEG",
                 caption=f"cosine similarity to token ({row}, {col})")  # fmt: skip
        st.image(colour_scale(float(sim.min()), float(sim.max()), SHOWN_WIDTH),
                 caption="colour scale: cosine similarity")  # fmt: skip
        if f.probs is not None:
            pc = int(f.argmax[n])
            st.markdown(f"Query token ({row}, {col}): pseudo-concept **#{pc}**, probability "
                        f"**{f.probs[n, pc]:.3f}**")  # fmt: skip
            st.session_state["query_concept"] = (pc, float(f.probs[n, pc]))
    image_id = names.index(name)
    hits = index.query_token(image_id, row, col, top=int(top), same_concept=same or None,
                             exclude_image=exclude or None, one_per_image=one)  # fmt: skip
    st.session_state["hits"] = [(h.path, h.row, h.col, round(h.score, 4)) for h in hits]
    st.subheader(f"Top {len(hits)} tokens across {len(names)} images")
    st.caption(f"Index: {index.describe()}; model on {ctx.encoder.device} "
               f"({ctx.extractor.dtype_name})")  # fmt: skip
    if not hits:
        st.info("No token matches these options.")
    grid = st.columns(6)
    for i, h in enumerate(hits):
        hit_img = ctx.shown(h.path)
        gh, gw = index.images[h.image]["grid"]
        crop = token_crop(hit_img, h.row, h.col, hit_img.height / gh, hit_img.width / gw)
        concept = f" · #{h.concept}" if h.concept >= 0 else ""
        with grid[i % 6]:
            st.image(crop, caption=f"{h.path} ({h.row},{h.col}) {h.score:.3f}{concept}")
            st.button("query from here", key=f"hit_{i}", on_click=_query_from,
                      args=(h.path, h.row, h.col))  # fmt: skip
