"""Broken checkpoints a user may point the explorer at, generated from a good export."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file


class Foreign:
    """A class outside torch's safe allowlist: loading a pickle of it must be refused."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def bad_checkpoints(root: Path, good: Path) -> dict[str, Path]:
    """name -> path; every one must be refused with one line (missing, a folder, empty,
    truncated, random bytes, text, bad header, wrong tensors, foreign pickles), .pt and
    .safetensors variants."""
    root.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    out = {"missing": root / "missing.safetensors", "folder": root / "folder"}
    out["folder"].mkdir(exist_ok=True)
    torch.save({"pos_embed": torch.zeros(1, 5, 8)}, root / "small.pt")
    small = (root / "small.pt").read_bytes()
    header = b'{"a": not json'
    files = {
        "empty.pt": b"",
        "empty.safetensors": b"",
        "random.pt": os.urandom(4096),
        "random.safetensors": os.urandom(4096),
        "text.pt": b"hello, I am not a checkpoint\n",
        "text.safetensors": b"hello, I am not a checkpoint\n",
        "truncated.pt": small[: len(small) // 2],
        "truncated.safetensors": data[: len(data) // 2],
        "bad_header.safetensors": struct.pack("<Q", len(header)) + header,
        "foreign.pt": pickle.dumps({"model": Foreign()}),
    }
    for name, raw in files.items():
        (root / name).write_bytes(raw)
        out[name] = root / name
    save_file({"foo": torch.zeros(3)}, str(root / "wrong_tensors.safetensors"))
    torch.save({"foo": torch.zeros(3)}, root / "wrong_tensors.pt")
    torch.save({"model": {"w": Foreign()}}, root / "foreign_zip.pt")
    torch.save([torch.zeros(2)], root / "a_list.pt")
    for name in ("wrong_tensors.safetensors", "wrong_tensors.pt", "foreign_zip.pt", "a_list.pt"):
        out[name] = root / name
    (root / "small.pt").unlink()
    return out
