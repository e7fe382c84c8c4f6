"""mcssl concept explorer: ``streamlit run app/main.py`` (see the README's app command)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the app's own modules

import auth  # noqa: E402
import common  # noqa: E402
from views import concepts, explore, retrieve, train  # noqa: E402

PAGES = {
    "Explore": explore.render,
    "Concepts": concepts.render,
    "Retrieve": retrieve.render,
    "Train": train.render,
}

st.set_page_config(page_title="mcssl concept explorer", page_icon="🧩", layout="wide")
auth.gate()  # nothing below runs without the token (when one is needed)
page = st.sidebar.radio("Page", list(PAGES), key="page", horizontal=True)
st.title(f"mcssl · {page}")
if page == "Train":  # the Train page needs no model or images
    common.guarded(PAGES[page])
else:
    ctx = common.context()
    if ctx is not None:
        common.guarded(lambda: PAGES[page](ctx))
