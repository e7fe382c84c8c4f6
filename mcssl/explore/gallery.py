"""In-memory image sets for the app: the demo photos, a folder, or uploaded files; plus the
per-gallery token index kept on disk per (checkpoint, gallery, settings)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from PIL import Image

from mcssl.explore.features import FeatureExtractor, image_digest
from mcssl.explore.index import TokenIndex, TokenIndexError
from mcssl.explore.pipeline import open_image
from mcssl.images import DEFAULT_MAX_PIXELS, ImageError, find_images, sample_photos

MAX_FOLDER_IMAGES = 500  # a gallery is for looking at; index bigger sets with `mcssl index`


@dataclass
class Gallery:
    names: list[str]
    images: list[Image.Image]
    errors: list[str] = field(default_factory=list)  # one line per file that was skipped
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    @cached_property
    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=12)
        for name, img in zip(self.names, self.images, strict=True):
            h.update(name.encode())
            h.update(image_digest(img).encode())
        return h.hexdigest()

    @classmethod
    def demo(cls) -> Gallery:
        """The photos shipped with scikit-image and scikit-learn (no network)."""
        photos = sample_photos()
        return cls(list(photos), list(photos.values()), source="demo photos")

    @classmethod
    def from_folder(cls, path: str | Path, limit: int = MAX_FOLDER_IMAGES) -> Gallery:
        try:
            files = find_images(path)
        except FileNotFoundError as e:
            raise ImageError(str(e)) from None
        if not files:
            raise ImageError(f"no images found under {path}")
        names, images, errors = [], [], []
        for f in files[:limit]:
            try:
                images.append(open_image(f))
                names.append(str(Path(f).relative_to(path)) if Path(path).is_dir() else f.name)
            except ImageError as e:
                errors.append(str(e))
        if len(files) > limit:
            errors.append(f"{path}: only the first {limit} of {len(files)} images are shown")
        return cls(names, images, errors, source=str(path))

    @classmethod
    def from_uploads(
        cls, files: list[tuple[str, bytes]], max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Gallery:
        """(file name, bytes) pairs; unreadable ones become errors, never exceptions. The same
        file twice is shown once (one note); same name, other bytes: the name gets " (2)"."""
        names, images, errors = [], [], []
        seen: set[tuple[str, bytes]] = set()
        count: dict[str, int] = {}
        for name, data in files:
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if (name, digest) in seen:
                errors.append(f"{name}: uploaded more than once (used once)")
                continue
            seen.add((name, digest))
            count[name] = count.get(name, 0) + 1
            shown = name if count[name] == 1 else f"{name} ({count[name]})"
            try:
                images.append(open_image(shown, max_pixels, data=data))
                names.append(shown)
            except ImageError as e:
                errors.append(str(e))
        return cls(names, images, list(dict.fromkeys(errors)), source="uploads")


def gallery_index(
    extractor: FeatureExtractor,
    gallery: Gallery,
    cache_dir: Path | None,
    progress: Callable[[float], None] | None = None,
) -> TokenIndex:
    """The exact token index of a gallery, loaded from ``cache_dir`` when it was built before
    for the same checkpoint, images and settings (names are the gallery's names)."""
    key = hashlib.blake2b(
        f"{extractor.encoder.digest}|{gallery.digest}|{extractor.settings}".encode(), digest_size=12
    ).hexdigest()
    folder = cache_dir / key if cache_dir is not None else None
    if folder is not None and (folder / "images.json").exists():
        try:
            return TokenIndex.load(folder)
        except TokenIndexError:
            pass  # a damaged cache is rebuilt
    index: TokenIndex | None = None
    step = (
        extractor.settings.batch_size if progress is None else min(4, extractor.settings.batch_size)
    )
    for i in range(0, len(gallery), step):
        feats = extractor(gallery.images[i : i + step])
        for name, f in zip(gallery.names[i : i + step], feats, strict=True):
            index = index or TokenIndex(f.tokens.shape[1], kind="flat")
            index.add_image(f.tokens, f.grid, name, f.argmax)
        if progress is not None:
            progress(min(1.0, (i + step) / len(gallery)))
    if index is None:
        raise ImageError("the gallery is empty")
    if folder is not None:
        index.save(folder)
    return index
