"""What the engine's warm-up (``app/warmup.py``) is doing and what it made: read by the page's
caches (``common.encoder`` / ``extractor`` / ``demo_gallery`` look here first). Its own module
so that ``common`` (which the warm-up thread imports) does not import ``warmup``.

Standard library only."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class State:
    """What the warm-up thread is doing and what it made (read by the page's thread)."""

    stage: str = "Starting the engine: importing PyTorch, timm, scikit-learn…"
    done: int = 0  # images encoded so far
    total: int = 0  # images to encode
    made: dict[tuple, object] = field(default_factory=dict)  # cache key -> resource
    finished: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def found(self, *key: object) -> object | None:
        """The resource made for ``key``, once the warm-up is over (None: make it yourself)."""
        return self.made.get(key) if self.finished.is_set() else None


STATE = State()
