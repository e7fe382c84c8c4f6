"""mcssl.access: exposure, the token, the data roots and the training switch."""

from __future__ import annotations

import hmac
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcssl import access as acc
from mcssl.access import Access, PathRefused, access, data_source_path, is_loopback, token_ok

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True), ("LocalHost", True),
        ("::1", True), ("[::1]", True),
        ("", False), (None, False), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
        ("192.168.0.7", False), ("gpu-server.lan", False), ("unix:///tmp/st.sock", False),
    ],
)  # fmt: skip
def test_only_loopback_addresses_count_as_local(address: str | None, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_loopback_needs_no_token_unless_one_is_set() -> None:
    local = access("127.0.0.1", {})
    assert (local.exposed, local.token, local.roots, local.training) == (False, None, None, True)
    assert local.allows(None) and local.allows("anything")
    set_ = access("127.0.0.1", {"MCSSL_APP_TOKEN": "a-long-enough-token-123"})
    assert not set_.exposed and set_.token == "a-long-enough-token-123"
    assert not set_.allows(None) and not set_.allows("wrong")
    assert set_.allows("a-long-enough-token-123")


def test_exposed_needs_the_token_and_is_told_by_address_or_env() -> None:
    env = {"MCSSL_APP_TOKEN": "t" * 32}
    for address in ("0.0.0.0", "", "10.0.0.5"):
        assert access(address, env).exposed
    told = access("127.0.0.1", {**env, "MCSSL_APP_EXPOSED": "1"})
    assert told.exposed and told.token == "t" * 32
    assert not told.allows(None) and not told.allows("") and not told.allows("t" * 31)
    assert not told.allows("t" * 32 + "x") and told.allows("t" * 32)
    assert not access("127.0.0.1", {**env, "MCSSL_APP_EXPOSED": "0"}).exposed


def test_an_exposed_server_makes_its_own_token_once_and_logs_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(acc, "_generated", None)
    with caplog.at_level(logging.WARNING, "mcssl.app"):
        first = access("0.0.0.0", {}).token
        second = access("0.0.0.0", {}).token
    assert first and first == second and len(first) >= 40
    assert [r.getMessage().count(first) for r in caplog.records] == [2]  # one line, printed once


def test_a_short_token_is_accepted_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(acc, "_warned_short", False)
    with caplog.at_level(logging.WARNING, "mcssl.app"):
        assert access("0.0.0.0", {"MCSSL_APP_TOKEN": "abc"}).allows("abc")
        assert access("0.0.0.0", {"MCSSL_APP_TOKEN": "abc"}).allows("abc")
    assert sum("shorter than 16" in r.getMessage() for r in caplog.records) == 1
    assert not any("abc" in r.getMessage() for r in caplog.records)  # never logged


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:  # the real function, recorded
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(acc.hmac, "compare_digest", spy)
    assert token_ok("sécret", "sécret") and not token_ok("secret", "sécret")
    rules = access("0.0.0.0", {"MCSSL_APP_TOKEN": "x" * 20})
    assert not rules.allows("y" * 20)
    assert calls == [
        ("sécret".encode(),) * 2,
        (b"secret", "sécret".encode()),
        (b"y" * 20, b"x" * 20),
    ]


def test_training_switch() -> None:
    assert access("127.0.0.1", {}).training
    for off in ("0", "false", "no", "OFF"):
        assert not access("127.0.0.1", {"MCSSL_APP_TRAINING": off}).training
    assert access("127.0.0.1", {"MCSSL_APP_TRAINING": "1"}).training


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """allowed/ (a folder, an image, a link out, a link in) and outside/ beside it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "imgs").mkdir(parents=True)
    outside.mkdir()
    (allowed / "imgs" / "a.png").write_bytes(b"x")
    (outside / "secret.pt").write_bytes(b"x")
    (allowed / "out_link").symlink_to(outside)
    (allowed / "file_link.pt").symlink_to(outside / "secret.pt")
    (allowed / "in_link").symlink_to(allowed / "imgs")
    return allowed, outside


def test_paths_outside_the_roots_are_refused_with_one_line(tmp_path: Path) -> None:
    allowed, outside = _tree(tmp_path)
    rules = access("127.0.0.1", {"MCSSL_DATA_ROOTS": f"{allowed}{os.pathsep}{tmp_path / 'b'}"})
    assert rules.roots == (allowed.resolve(), (tmp_path / "b").resolve())
    refused = [
        outside,  # absolute, outside
        outside / "secret.pt",
        allowed / ".." / "outside",  # `..`
        f"{allowed}/imgs/../../outside/secret.pt",
        allowed / "out_link",  # a symlink pointing outside
        allowed / "out_link" / "secret.pt",
        allowed / "file_link.pt",
        tmp_path / "allowed_not",  # a sibling whose name starts like a root
        "/etc",
        "~",
    ]
    for path in refused:
        with pytest.raises(PathRefused) as e:
            rules.check_path(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: outside the folders") and str(allowed) in msg
        assert "\n" not in msg
    inside = {
        allowed: allowed,
        allowed / "imgs" / "a.png": allowed / "imgs" / "a.png",
        allowed / "in_link": allowed / "imgs",  # a symlink that stays inside
        f"{allowed}/imgs/../imgs": allowed / "imgs",
        allowed / "not_yet" / "run": allowed / "not_yet" / "run",  # need not exist
    }
    for path, want in inside.items():
        assert rules.check_path(path) == want.resolve()


def test_default_roots_are_the_volumes_when_exposed_and_none_on_loopback(tmp_path: Path) -> None:
    assert access("127.0.0.1", {}).roots is None
    env = {"MCSSL_APP_TOKEN": "t" * 20, "MCSSL_RUNS": str(tmp_path / "r")}
    env["MCSSL_CHECKPOINTS"] = str(tmp_path / "c")
    roots = access("0.0.0.0", env).roots
    want = [Path(p).resolve() for p in ("/runs", "/data", "/checkpoints")]
    assert roots == (*want, (tmp_path / "r").resolve(), (tmp_path / "c").resolve())
    rules = Access(True, None, roots, True)
    assert rules.check_path(tmp_path / "r" / "x" / "teacher.safetensors")
    with pytest.raises(PathRefused):
        rules.check_path(tmp_path / "elsewhere")
    explicit = access("0.0.0.0", {**env, "MCSSL_DATA_ROOTS": str(tmp_path / "only")}).roots
    assert explicit == ((tmp_path / "only").resolve(),)


def test_data_source_path() -> None:
    assert data_source_path("samples") is None and data_source_path("synthetic:20") is None
    assert data_source_path("") is None
    assert data_source_path("cache:/data/c.npy") == "/data/c.npy"
    assert data_source_path("/data/imgs") == "/data/imgs"


def test_the_launcher_sets_and_prints_a_token_or_keeps_the_given_one() -> None:
    cmd = [sys.executable, "-m", "mcssl.access", sys.executable, "-c",
           "import os; print(os.environ['MCSSL_APP_TOKEN'])"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MCSSL_APP_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    token = done.stdout.strip()
    assert len(token) >= 40 and done.stderr.count(token) == 2  # the token and the ?token= URL
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert again.stdout.strip() != token  # a new one per start
    env["MCSSL_APP_TOKEN"] = "mine-mine-mine-mine"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "mine-mine-mine-mine" and "mine" not in done.stderr
