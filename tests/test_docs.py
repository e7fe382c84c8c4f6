"""Docs that must follow the code: the configuration reference."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from mcssl.config import Config

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _code_defaults() -> dict[str, object]:
    out = {}
    for section in dataclasses.fields(Config):
        if section.name == "recipe":
            continue
        for f in dataclasses.fields(section.default_factory()):
            d = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f"{section.name}.{f.name}"] = d
    return out


def _doc_rows() -> dict[str, tuple[object, str]]:
    rows = {}
    for line in (DOCS / "CONFIG.md").read_text().splitlines():
        m = re.match(r"\| `([a-z_]+\.[a-z_]+)` \| `(.*?)` \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (json.loads(m.group(2)), m.group(3).strip())
    return rows


def test_every_config_field_is_documented_with_its_default() -> None:
    code, docs = _code_defaults(), _doc_rows()
    assert sorted(set(code) - set(docs)) == [], "fields missing from docs/CONFIG.md"
    assert sorted(set(docs) - set(code)) == [], "docs/CONFIG.md lists fields that do not exist"
    for key, value in code.items():
        assert json.dumps(docs[key][0]) == json.dumps(value), f"{key}: docs say {docs[key][0]!r}"
        assert len(docs[key][1]) > 10, f"{key}: no description"


def test_cli_reference_is_current() -> None:
    from mcssl.cli import reference

    assert (DOCS / "CLI.md").read_text() == reference(), "run `make docs`"
