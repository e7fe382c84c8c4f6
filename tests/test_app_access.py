"""The app told it is exposed (AppTest): nothing but the login without the token, a wrong
token refused and logged, typed paths kept under MCSSL_DATA_ROOTS, training switched off."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from mcssl import access

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
TOKEN = "the-right-token-for-tests-0123456789"
WRONG = "a-wrong-guess-9876543210"


@pytest.fixture
def env(smoke_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An exposed app (bound to 127.0.0.1 by .streamlit/config.toml, told it is exposed) with
    its token and one allowed root; returns the root."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(smoke_export))
    monkeypatch.setenv("MCSSL_RUNS", str(allowed / "runs"))
    monkeypatch.setenv("MCSSL_APP_EXPOSED", "1")
    monkeypatch.setenv("MCSSL_APP_TOKEN", TOKEN)
    monkeypatch.setenv("MCSSL_DATA_ROOTS", str(allowed))
    return allowed.resolve()


def _app(page: str = "Explore", token: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["res"] = 112
    at.session_state["page"] = page
    if token is not None:
        at.query_params["token"] = token
    return at.run()


def _only_login(at: AppTest) -> None:
    """The login form and nothing else: no title, no sidebar, no image, no page element."""
    assert not at.exception
    assert [t.label for t in at.text_input] == ["Token"]
    assert [b.label for b in at.button] == ["Log in"]
    assert not at.sidebar.children
    assert not at.title and not at.get("image")
    assert not at.get("plotly_chart") and not at.get("download_button") and not at.info
    assert not at.get("radio") and not at.get("multiselect")


def _logged_in(at: AppTest) -> None:
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.title[0].value.startswith("mcssl · ")
    assert "login_token" not in [t.key for t in at.text_input]


def test_no_content_image_or_index_without_the_token(env: Path) -> None:
    for page in ("Explore", "Concepts", "Retrieve", "Train"):
        at = _app(page)
        _only_login(at)
    at.session_state["token"] = ("astronaut", 3, 4)  # what a click on the Retrieve page stores
    at.run()
    _only_login(at)
    assert not (env / "runs").exists()  # no index, no job, nothing written


def test_a_wrong_token_is_refused_and_logged_without_the_token(
    env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):  # the tokens must not be in the log at any level
        at = _app(token=WRONG)
        assert [e.value for e in at.error] == ["Wrong token."]
        _only_login(at)
        assert "token" not in at.query_params
        at.text_input(key="login_token").set_value(TOKEN[:-1])
        at.button[0].click().run()
        assert [e.value for e in at.error] == ["Wrong token."]
        _only_login(at)
    refused = [r.getMessage() for r in caplog.records if "wrong app token" in r.getMessage()]
    assert len(refused) == 2 and "(URL)" in refused[0] and "(form)" in refused[1]
    assert not any(WRONG in m or TOKEN[:-1] in m for m in caplog.messages)


def test_the_right_token_in_the_url_or_the_form_opens_every_page(env: Path) -> None:
    at = _app(token=TOKEN)
    _logged_in(at)
    assert "token" not in at.query_params  # taken out of the address bar
    assert len([c for im in at.get("image") for c in im.captions if c == "k=4"]) == 6
    at.sidebar.radio(key="page").set_value("Retrieve").run()  # the session stays logged in
    _logged_in(at)
    at.session_state["token"] = ("astronaut", 3, 4)
    at.run()
    _logged_in(at)
    assert len(at.session_state["hits"]) == 12  # the index (maybe cached by an earlier test)

    at = _app("Concepts")
    _only_login(at)
    at.text_input(key="login_token").set_value(f" {TOKEN} ")
    at.button[0].click().run()
    _logged_in(at)
    assert at.title[0].value == "mcssl · Concepts" and len(at.get("plotly_chart")) == 1


def test_on_loopback_the_app_opens_without_a_token_unless_one_is_set(
    smoke_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(smoke_export))
    monkeypatch.setenv("MCSSL_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("MCSSL_APP_TOKEN", raising=False)
    monkeypatch.delenv("MCSSL_APP_EXPOSED", raising=False)
    _logged_in(_app("Train"))
    monkeypatch.setenv("MCSSL_APP_TOKEN", TOKEN)
    _only_login(_app("Train"))
    _logged_in(_app("Train", TOKEN))


@pytest.mark.parametrize("address", ["0.0.0.0", "", "10.1.2.3"])
def test_a_server_bound_beyond_loopback_asks_for_a_token_by_itself(
    env: Path, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    from streamlit import config

    monkeypatch.delenv("MCSSL_APP_EXPOSED")
    monkeypatch.delenv("MCSSL_APP_TOKEN")
    monkeypatch.setattr(access, "_generated", None)
    _logged_in(_app("Train"))  # .streamlit/config.toml's 127.0.0.1: open
    before = config.get_option("server.address")
    try:
        config.set_option("server.address", address)
        _only_login(_app("Train"))
        assert access._generated
        _logged_in(_app("Train", access._generated))
    finally:
        config.set_option("server.address", before)


def test_a_generated_token_is_logged_once_and_opens_the_app(
    env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MCSSL_APP_TOKEN")
    monkeypatch.setattr(access, "_generated", None)
    with caplog.at_level(logging.WARNING, "mcssl.app"):
        _only_login(_app("Train"))
        _only_login(_app("Train"))
    (line,) = [m for m in caplog.messages if "mcssl app token" in m]
    token = line.split("?token=")[1]
    _logged_in(_app("Train", token))


def _folder_error(at: AppTest, path: str) -> list[str]:
    at.sidebar.radio(key="source").set_value("Folder").run()
    at.sidebar.text_input(key="folder").set_value(path).run()
    assert not at.exception
    return [e.value for e in at.error]


def test_folder_and_checkpoint_paths_outside_the_roots_get_one_line(
    env: Path, tmp_path: Path, smoke_export: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "imgs").mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(outside / "imgs" / "red.png")
    shutil.copy(smoke_export, outside / "model.safetensors")
    (env / "imgs").mkdir()
    Image.new("RGB", (64, 48), "blue").save(env / "imgs" / "blue.png")
    shutil.copy(smoke_export, env / "model.safetensors")
    (env / "link").symlink_to(outside / "imgs")
    (env / "model_link.safetensors").symlink_to(outside / "model.safetensors")

    at = _app(token=TOKEN)
    for path in (str(outside / "imgs"), f"{env}/../outside/imgs", str(env / "link"), "/etc"):
        errors = _folder_error(at, path)
        assert errors == [f"{path}: outside the folders this server may read ({env})"]
        assert not at.get("image")
    assert not _folder_error(at, str(env / "imgs"))
    captions = [c for im in at.get("image") for c in im.captions]
    assert "blue.png" in captions and "k=2" in captions

    for path in (str(outside / "model.safetensors"), str(env / "model_link.safetensors"),
                 f"{env}/../outside/model.safetensors"):  # fmt: skip
        at.sidebar.text_input(key="checkpoint_path").set_value(path).run()
        assert not at.exception
        assert [e.value for e in at.error] == [
            f"{path}: outside the folders this server may read ({env})"
        ]
        assert not at.get("image")
    for path in (str(env / "model.safetensors"), "default", ""):
        at.sidebar.text_input(key="checkpoint_path").set_value(path).run()
        _logged_in(at)
        assert "blue.png" in [c for im in at.get("image") for c in im.captions]


def test_training_outside_the_roots_is_refused(env: Path, tmp_path: Path) -> None:
    at = _app("Train", TOKEN)
    _logged_in(at)
    at.text_input(key="train_out").set_value(str(tmp_path / "elsewhere"))
    at.button[0].click().run()
    assert [e.value for e in at.error] == [
        f"{tmp_path / 'elsewhere'}: outside the folders this server may read ({env})"
    ]
    at.text_input(key="train_out").set_value(str(env / "runs" / "x"))
    at.text_input(key="train_data").set_value(f"cache:{tmp_path}/c.npy")
    at.button[0].click().run()
    assert [e.value for e in at.error] == [
        f"{tmp_path}/c.npy: outside the folders this server may read ({env})"
    ]
    assert not (tmp_path / "elsewhere").exists() and not (env / "runs" / "x").exists()


def test_training_can_be_switched_off(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCSSL_APP_TRAINING", "0")
    at = _app("Train", TOKEN)
    _logged_in(at)
    assert [i.value for i in at.info] == [
        "Training from the app is switched off on this server (MCSSL_APP_TRAINING=0)."
    ]
    assert not at.button and not at.text_input and not at.text_area
    assert not (env / "runs").exists()
