"""mcssl concept explorer: ``streamlit run app/main.py`` (see the README's app command)."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the app's own modules

import auth  # noqa: E402  (light: the standard library and streamlit)
import warmup  # noqa: E402  (light too; the engine starts in its thread)

NAMES = ("Explore", "Concepts", "Retrieve", "Train")

st.set_page_config(page_title="mcssl concept explorer", page_icon="🧩", layout="wide")
auth.gate()  # nothing below runs without the token (when one is needed)
page = st.sidebar.radio("Page", NAMES, key="page", horizontal=True)
st.title(f"mcssl · {page}")
warmup.wait()  # a progress bar naming the step while the engine starts (once per server)
import common  # noqa: E402  (imported by the warm-up by now)
from views import concepts, explore, retrieve, train  # noqa: E402

PAGES = {
    "Explore": explore.render,
    "Concepts": concepts.render,
    "Retrieve": retrieve.render,
    "Train": train.render,
}
if page == "Train":  # the Train page needs no model or images
    common.guarded(PAGES[page])
else:  # the sidebar too runs inside the guard: a bad checkpoint is one message
    common.guarded(lambda: common.with_context(page, PAGES[page]))
