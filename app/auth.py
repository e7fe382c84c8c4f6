"""The gate in front of every page and the path checks of the input fields; the rules are in
``mcssl.access`` (token, exposure, roots, training switch)."""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from mcssl.access import Access, PathRefused, access, data_source_path
from mcssl.config import load_config

log = logging.getLogger("mcssl.app")
KEY = "_mcssl_token"  # the accepted token; checked again on every run


def rules() -> Access:
    return access(st.get_option("server.address"))


def _offer(rules_: Access, given: str, how: str) -> bool:
    """A token from the URL or the form: kept in the session when right, logged when wrong
    (never the token itself)."""
    if rules_.allows(given):
        st.session_state[KEY] = given
        return True
    log.warning("refused a wrong app token (%s) from %s", how, st.context.ip_address or "?")
    st.error("Wrong token.")
    return False


def gate() -> None:
    """Stops the run with only a login form shown until this browser session has given the
    token (``?token=`` in the first URL, or the form)."""
    rules_ = rules()
    if rules_.allows(st.session_state.get(KEY)):
        return
    if "token" in st.query_params:
        given = st.query_params["token"]
        del st.query_params["token"]  # not left in the address bar
        if _offer(rules_, given, "URL"):
            return
    st.header("mcssl concept explorer")
    with st.form("login"):
        hint = "Printed in the server log at start, or the value of MCSSL_APP_TOKEN"
        typed = st.text_input("Token", type="password", key="login_token", help=hint)
        sent = st.form_submit_button("Log in", type="primary")
    if sent and _offer(rules_, typed.strip(), "form"):
        st.rerun()
    st.stop()


def checked(path: str) -> Path:
    """A typed path, resolved; PathRefused (one line) when outside MCSSL_DATA_ROOTS."""
    return rules().check_path(path)


def check_training(out: str, recipe: str, overrides: list[str]) -> None:
    """The folders a training job would read and write must be under the roots too."""
    rules_ = rules()
    if rules_.roots is None:
        return
    cfg = load_config(recipe, overrides)  # ConfigError for a bad override, as before
    for path in (out, data_source_path(cfg.data.path), cfg.run.knn_train, cfg.run.knn_val):
        if path:
            rules_.check_path(path)


__all__ = ["PathRefused", "check_training", "checked", "gate", "rules"]
