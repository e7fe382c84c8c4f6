"""``streamlit run app/serve.py`` (``make app``): the explorer (``app/main.py``) with the engine
warming up as the server starts, so PyTorch is imported, the bundled model loaded and the
demo photos encoded while the browser connects (``app/warmup.py``), and a loading message in
the page's HTML that shows before Streamlit's JavaScript has loaded (``app/bootscreen.py``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the app's own modules

import warmup  # noqa: E402  (light: the standard library and streamlit)
from bootscreen import BootScreen  # noqa: E402


@asynccontextmanager
async def lifespan(_app: st.App) -> AsyncIterator[None]:
    warmup.start()
    yield


app = st.App("main.py", lifespan=lifespan, middleware=[Middleware(BootScreen)])
