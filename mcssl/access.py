"""Who may use the concept explorer, and which files it may read (no Streamlit in here:
``app/auth.py`` draws the login and calls these rules).

- **Exposed**: the server listens on anything but loopback (an empty ``server.address`` = every
  interface, ``0.0.0.0``, ``::``, a LAN address or name, a unix socket), or
  ``MCSSL_APP_EXPOSED=1`` says so (e.g. behind a reverse proxy on the same host).
- **Token**: needed when exposed, and whenever ``MCSSL_APP_TOKEN`` is set. An exposed server
  without ``MCSSL_APP_TOKEN`` makes one with ``secrets`` and logs it once (like Jupyter).
  ``python -m mcssl.access CMD ...`` (the Docker image's command) sets it before the server
  starts, so it is printed at start.
- **Roots**: ``MCSSL_DATA_ROOTS`` (``os.pathsep``-separated folders). Unset: the container's
  volumes and the runs/checkpoints folders when exposed, no limit on loopback. Paths are
  checked after resolving ``~``, symlinks and ``..``.
- **Training**: ``MCSSL_APP_TRAINING=0`` switches the app's Train page off.

Light on purpose (standard library only): ``python -m mcssl.access`` runs before the app.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mcssl.app")

TOKEN_ENV = "MCSSL_APP_TOKEN"
CONTAINER_ROOTS = ("/runs", "/data", "/checkpoints")  # the Docker image's volumes
SHORT_TOKEN = 16  # characters; shorter tokens are accepted with a warning in the log

_generated: str | None = None  # this process's token when none was given
_warned_short = False


class PathRefused(ValueError):
    """A path outside the allowed roots; the message is one line for the page."""


def is_loopback(address: str | None) -> bool:
    """Whether a bind address reaches this machine only. Anything else, including an empty
    address (every interface), a host name other than localhost and a unix socket (usually
    proxied), counts as exposed."""
    host = (address or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _on(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def token_ok(given: str, token: str) -> bool:
    """Constant-time comparison (the time taken does not tell how much of a guess is right)."""
    return hmac.compare_digest(given.encode(), token.encode())


def new_token() -> str:
    """43 URL-safe characters (256 random bits)."""
    return secrets.token_urlsafe(32)


def server_token(env: Mapping[str, str]) -> str:
    """``MCSSL_APP_TOKEN``, or this process's own token (made and logged once)."""
    global _generated, _warned_short
    given = env.get(TOKEN_ENV, "").strip()
    if given:
        if len(given) < SHORT_TOKEN and not _warned_short:
            _warned_short = True  # once, not at every rerun
            log.warning("%s is shorter than %d characters: easy to guess", TOKEN_ENV, SHORT_TOKEN)
        return given
    if _generated is None:
        _generated = new_token()
        log.warning(
            "mcssl app token (set %s to choose one): %s  -> open the app at "
            "http://HOST:PORT/?token=%s",
            TOKEN_ENV, _generated, _generated,
        )  # fmt: skip
    return _generated


def parse_roots(text: str) -> tuple[Path, ...]:
    """``os.pathsep``-separated folders -> resolved paths (empty parts are skipped)."""
    parts = [p.strip() for p in text.split(os.pathsep)]
    return tuple(Path(p).expanduser().resolve() for p in parts if p)


def default_roots(env: Mapping[str, str]) -> tuple[Path, ...]:
    """The container's volumes, the runs folder and ``MCSSL_CHECKPOINTS``."""
    extra = [env.get("MCSSL_RUNS") or "runs", env.get("MCSSL_CHECKPOINTS", "")]
    return parse_roots(os.pathsep.join([*CONTAINER_ROOTS, *extra]))


@dataclass(frozen=True)
class Access:
    exposed: bool
    token: str | None  # None: no token needed
    roots: tuple[Path, ...] | None  # None: any path
    training: bool

    def allows(self, given: str | None) -> bool:
        """Whether ``given`` opens the app (always, when no token is needed)."""
        return self.token is None or (given is not None and token_ok(given, self.token))

    def check_path(self, path: str | Path) -> Path:
        """``path`` with ``~``, symlinks and ``..`` resolved; PathRefused when it is outside
        every root."""
        resolved = Path(path).expanduser().resolve(strict=False)
        if self.roots is None or any(resolved.is_relative_to(r) for r in self.roots):
            return resolved
        roots = ", ".join(str(r) for r in self.roots)
        raise PathRefused(f"{path}: outside the folders this server may read ({roots})")


def access(address: str | None, env: Mapping[str, str] | None = None) -> Access:
    """The rules for a server bound to ``address`` (Streamlit's ``server.address``)."""
    env = os.environ if env is None else env
    exposed = _on(env, "MCSSL_APP_EXPOSED", False) or not is_loopback(address)
    token = server_token(env) if exposed or env.get(TOKEN_ENV, "").strip() else None
    if env.get("MCSSL_DATA_ROOTS", "").strip():
        roots: tuple[Path, ...] | None = parse_roots(env["MCSSL_DATA_ROOTS"])
    else:
        roots = default_roots(env) if exposed else None
    return Access(exposed, token, roots, _on(env, "MCSSL_APP_TRAINING", True))


def data_source_path(source: str) -> str | None:
    """The file or folder a ``data.path`` value reads (None for samples and synthetic:N)."""
    if not source or source == "samples" or source.startswith(("synthetic:", "synthetic-varied:")):
        return None
    return source.removeprefix("cache:")


def main(argv: list[str]) -> None:
    """``python -m mcssl.access CMD ...``: runs CMD with ``MCSSL_APP_TOKEN`` set; a new token
    is made and printed once when it is not set, so it is in the log from the start."""
    if not argv:
        sys.exit("usage: python -m mcssl.access COMMAND [ARGS...]")
    if not os.environ.get(TOKEN_ENV, "").strip():
        token = new_token()
        os.environ[TOKEN_ENV] = token
        print(
            f"mcssl app token (set {TOKEN_ENV} to choose one): {token}\n"
            f"  open the app at http://HOST:PORT/?token={token}",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
