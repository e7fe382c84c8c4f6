"""A loading message in the page's HTML itself, so it shows from the first paint.

A Streamlit page is blank until its JavaScript (several MB) is parsed, the websocket is open and
the script's first element arrives: 1.2 s for a page with only a title on a 2-core machine,
2-3 s for the explorer while its engine warms up. :class:`BootScreen` (ASGI middleware for
``st.App``, ``app/serve.py``) adds a small spinner and a line of text to every HTML page
Streamlit serves, and a few lines of script that remove them once Streamlit has drawn a heading,
its running indicator or a progress bar, which from then on say what the app is doing.

Light on purpose (the standard library only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

ROOT = b'<div id="root"></div>'
BOOT_ID = "mcssl-boot"
# What ends the boot screen: the first thing Streamlit draws that says the app is working or
# shows a result (every page starts with a heading; the running indicator, a progress bar...).
DRAWN = ", ".join(
    f'[data-testid="{t}"]'
    for t in ("stStatusWidget", "stProgress", "stSpinner", "stHeading", "stImage", "stException")
)
# Beside the root, not in it: React empties the root when it mounts, half a second or more
# before the first element arrives. Inline style and script: nothing else has loaded yet.
SCREEN = f"""{ROOT.decode()}
<div id="{BOOT_ID}" role="status" style="position:fixed;top:6rem;left:5rem;display:flex;
 align-items:center;gap:.75rem;font-family:sans-serif;font-size:1.1rem;color:#31333f">
 <style>@keyframes mcssl-spin{{to{{transform:rotate(360deg)}}}}</style>
 <span style="width:1.2rem;height:1.2rem;border:3px solid #d0d0d8;border-top-color:#ff4b4b;
  border-radius:50%;animation:mcssl-spin .8s linear infinite"></span>
 Starting the concept explorer&hellip;</div>
<script>
new MutationObserver((_, seen) => {{
  if (!document.querySelector('{DRAWN}')) return;
  document.getElementById("{BOOT_ID}")?.remove();
  seen.disconnect();
}}).observe(document.getElementById("root"), {{ childList: true, subtree: true }});
</script>""".encode()


def inject(html: bytes) -> bytes:
    """The page with the boot screen beside its root (unchanged when it has no empty root)."""
    return html.replace(ROOT, SCREEN, 1)


def _is_html(start: Message) -> bool:
    return dict(start.get("headers", [])).get(b"content-type", b"").startswith(b"text/html")


class BootScreen:
    """Rewrites the ``text/html`` responses to page loads (requests that accept HTML);
    everything else passes untouched. A page load goes on without ``Accept-Encoding``, so the
    body to rewrite is not gzipped (the page is 8 kB; its JavaScript is served apart, as
    before)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive, send) -> None:  # noqa: ANN001
        headers = dict(scope.get("headers", []))
        if scope["type"] != "http" or b"text/html" not in headers.get(b"accept", b""):
            await self.app(scope, receive, send)  # not a page load (assets, API, websocket)
            return
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
        start: Message = {}  # the held response start of an HTML page
        body: list[bytes] = []

        async def send_rewritten(message: Message) -> None:
            if message["type"] == "http.response.start" and _is_html(message):
                start.update(message)
                return
            if not start:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            page = inject(b"".join(body))
            kept = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            length = (b"content-length", str(len(page)).encode())
            await send({**start, "headers": [*kept, length]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, send_rewritten)
