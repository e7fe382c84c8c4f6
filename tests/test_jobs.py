"""Training jobs outside the caller's process: one at a time, stop keeps a checkpoint, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mcssl.config import ConfigError
from mcssl.jobs import JobError, Jobs


def _wait(jobs: Jobs, cond, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond(jobs.current()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"job stuck: {jobs.current()}")


def test_start_stop_resume_and_one_job_at_a_time(tmp_path: Path) -> None:
    jobs = Jobs(tmp_path / "runs")
    out = tmp_path / "runs" / "a"
    with pytest.raises(ConfigError, match="nope"):
        jobs.start(out, "nope")
    jobs.start(out, "smoke", ["optim.epochs=20", "run.log_every=1"])
    with pytest.raises(JobError, match="already running"):
        jobs.start(tmp_path / "runs" / "b", "smoke")
    _wait(jobs, lambda j: j.status == "running" and (out / "metrics.jsonl").exists())
    jobs.stop()
    _wait(jobs, lambda j: not j.active)
    job = jobs.current()
    assert job.status == "stopped", job
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] and 0 < summary["steps"] < 180
    assert (out / "last.pt").exists() and job.export.exists()  # a stopped run is exported too
    with pytest.raises(JobError, match="already holds a run"):
        jobs.start(out, "smoke")

    # shorter, to finish soon: the first epoch (9 steps) after the one it stopped in (the
    # stop can land after step 9 on a fast machine)
    epochs = summary["steps"] // 9 + 1
    jobs.start(out, resume=True, overrides=[f"optim.epochs={epochs}"])
    _wait(jobs, lambda j: not j.active)
    job = jobs.current()
    assert job.status == "finished", job
    done = json.loads((out / "summary.json").read_text())
    assert not done["stopped"] and done["steps"] == 9 * epochs >= summary["steps"]
    assert "--resume" in job.command()


def test_a_failing_run_is_reported_with_its_error(tmp_path: Path) -> None:
    jobs = Jobs(tmp_path / "runs")
    jobs.start(tmp_path / "runs" / "bad", "smoke", [f"data.path={tmp_path / 'missing'}"])
    _wait(jobs, lambda j: not j.active)
    job = jobs.current()
    assert job.status == "failed" and "missing" in job.message
    with pytest.raises(JobError, match="no training job is running"):
        jobs.stop()
