"""Bad input gets one clear line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mcssl.cli import main
from mcssl.images import sample_photos

SMOKE = ["--config", "mcssl/configs/smoke.yaml"]


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mcssl ")]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


def write_photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    photos = list(sample_photos().values())
    for i in range(n):
        photos[i % len(photos)].resize((64, 48)).save(folder / f"good_{i}.jpg")


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", *SMOKE, "--out", str(tmp_path / "r"), "optim.lrr=0.1"])
    line = one_error_line(capsys)
    assert code == 2
    assert "unknown config key(s): optim.lrr" in line


def test_bad_config_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", *SMOKE, "--out", str(tmp_path / "r"), "loss.recon_type=l3"])
    assert code == 2
    assert "loss.recon_type must be one of" in one_error_line(capsys)


def test_data_folder_without_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code = main(["train", *SMOKE, "--out", str(tmp_path / "r"), f"data.path={tmp_path / 'empty'}"])
    assert code == 1
    assert "no images found under" in one_error_line(capsys)


def test_corrupt_files_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    write_photos(data, 14)
    (data / "zero.jpg").write_bytes(b"")
    (data / "text.jpg").write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    (data / "truncated.jpg").write_bytes(buf.getvalue()[:100])
    out = tmp_path / "r"
    code = main(
        [
            "train",
            *SMOKE,
            "--out",
            str(out),
            f"data.path={data}",
            "data.repeat=1",
            "optim.epochs=3",
            "optim.batch_size=4",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # 17 files, 4 steps of 4 per epoch: an unreadable draw moves on to the next file, so
    # text.jpg costs 3 reads (text, truncated, zero), truncated 2, zero 1: at most 6 an epoch
    assert summary["steps"] == 12
    assert 1 <= summary["skipped_images"] <= 3 * 6
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert len(warned) == len(set(warned)) <= 3  # each bad file is named once


def test_unwritable_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = main(["train", *SMOKE, "--out", str(blocker / "run")])
    assert code == 1
    assert "cannot write to output folder" in one_error_line(capsys)


def test_wrong_resume_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "nothing").mkdir()
    code = main(["train", *SMOKE, "--out", str(tmp_path / "nothing"), "--resume"])
    assert code == 1
    assert "no training checkpoint at" in one_error_line(capsys)


def test_existing_run_needs_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r"
    assert main(["train", *SMOKE, "--out", str(out), "optim.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["train", *SMOKE, "--out", str(out)]) == 1
    assert "already holds a run" in one_error_line(capsys)
    assert main(["train", *SMOKE, "--out", str(out), "--resume", "model.depth=3"]) == 2
    assert "model settings differ" in one_error_line(capsys)
    # learnt loss weights add parameters the checkpoint does not have
    assert main(["train", *SMOKE, "--out", str(out), "--resume", "loss.combine=uncertainty"]) == 1
    assert "does not fit this run" in one_error_line(capsys)


def test_export_of_a_non_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"garbage")
    assert main(["export", str(bad), "--out", str(tmp_path / "t.safetensors")]) == 1
    assert "is not a readable mcssl checkpoint" in one_error_line(capsys)


def test_every_broken_checkpoint_is_one_line_and_exit_code_2(
    smoke_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Each file of the corpus: `mcssl concepts|index` exit 2 with one line that says what is
    wrong and what is accepted (docs/CLI.md: 2 = unusable checkpoint), no traceback."""
    from checkpoint_corpus import bad_checkpoints

    photo = tmp_path / "p.jpg"
    write_photos(tmp_path / "imgs", 1)
    photo = tmp_path / "imgs" / "good_0.jpg"
    corpus = bad_checkpoints(tmp_path / "bad", smoke_export)
    assert len(corpus) >= 16
    for name, path in corpus.items():
        for cmd in (
            ["concepts", "--out", str(tmp_path / "o")],
            ["index", "--out", str(tmp_path / "i")],
        ):
            code = main([cmd[0], "--checkpoint", str(path), *cmd[1:], str(photo)])
            line = one_error_line(capsys)
            assert code == 2, (name, line)
            assert str(path) in line and "expected an mcssl export" in line, (name, line)
            assert "cannot load checkpoint (" not in line, (name, line)
