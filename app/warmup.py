"""The engine, started before the first page needs it.

``streamlit run app/serve.py`` (``make app``) calls :func:`start` when the server starts, so
PyTorch, timm and scikit-learn are imported, the bundled model is loaded and the first demo
photos are encoded while the browser connects; ``streamlit run app/main.py`` starts it on
the first page run. The page then waits for it with a progress bar that names the step
(:func:`wait`) and finds the model, photos and features in the caches it uses
(``common.encoder`` / ``extractor`` / ``demo_gallery`` look in ``warmstate.STATE`` first).

Light on purpose (the standard library and streamlit): importing it must not import torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

import streamlit as st
import warmstate
from warmstate import State

log = logging.getLogger("mcssl.app")


_lock = threading.Lock()


def start() -> State:
    """Starts the warm-up thread once per process (later calls return its state)."""
    _skip_repl_check()
    state = warmstate.STATE
    with _lock:
        if state.thread is None:
            state.thread = threading.Thread(
                target=_run, args=(state,), name="mcssl-warmup", daemon=True
            )
            state.thread.start()
    return state


def _run(state: State) -> None:
    start_s, switch = time.perf_counter(), sys.getswitchinterval()
    # The imports hold the GIL for seconds: hand it to the server's thread more often, so the
    # browser gets the page (and the progress bar) while they run.
    sys.setswitchinterval(min(switch, 0.0005))
    try:
        with _passive_openmp():
            import common  # the heavy imports: PyTorch, timm, scikit-learn, FAISS
        common.warm(state)
        common.freeze_heap()
        log.info("engine warm in %.1f s", time.perf_counter() - start_s)
    except Exception:  # noqa: BLE001 (the page loads what it needs and says what is wrong)
        log.exception("warm-up failed; the page loads the model itself")
    finally:
        sys.setswitchinterval(switch)
        state.finished.set()


def _skip_repl_check() -> None:
    """Streamlit asks once per process, at the first element a page draws, whether it runs in
    a Python REPL, by ``inspect.stack()``: source lookups that scan every loaded module. With
    the warm-up importing thousands of modules beside it, that cost the first page 0.3-0.9 s
    before its first element. Under ``streamlit run`` the answer is no: mark it asked (a
    private flag; should it be renamed, this sets an unused name and Streamlit asks again)."""
    import streamlit.delta_generator as dg

    dg._use_warning_has_been_displayed = True


@contextlib.contextmanager
def _passive_openmp() -> Iterator[None]:
    """OpenMP threads that sleep instead of spinning while they wait (read once, when PyTorch
    loads OpenMP; the user's OMP_WAIT_POLICY wins). On a busy 2-core machine spinning threads
    made encoding the demo photos 3-7x slower (2.3-3.1 s against 7.7-14.9 s under a load of
    6-9); jobs started later (the Train page) get the environment as it was."""
    ours = "OMP_WAIT_POLICY" not in os.environ
    if ours:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        yield
    finally:
        if ours:
            os.environ.pop("OMP_WAIT_POLICY", None)


def wait() -> None:
    """Shows the warm-up's step (and "features i/n") until it is over: seconds, once per
    server. The page must not run the engine beside it (same caches, two cores)."""
    state = start()
    if state.finished.is_set():
        return
    bar = st.progress(0.0, text=state.stage)
    while not state.finished.wait(0.1):
        done, total = state.done, state.total
        text = f"{state.stage}: {done}/{total} images" if total else state.stage
        bar.progress(done / total if total else 0.0, text=text)
    bar.empty()
