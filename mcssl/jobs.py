"""One training job at a time, run outside the caller's process, with its state on disk.

The app starts ``python -m mcssl.jobs RUNS/job.json``: that runner holds ``RUNS/job.lock``
for its whole life, runs ``mcssl train`` (argument lists only, never a shell), exports the
teacher to ``OUT/teacher.safetensors`` when training ends, and records every state change in
``job.json``. So a page reload, a second browser tab or a restarted app all see the same job,
and a second job cannot start while one runs.

This module is the app's one door into training: it also hands on the device description and
the collapse advice that the Train page shows, so the app imports nothing from mcssl.train.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mcssl.train.distributed import describe_device
from mcssl.train.monitor import warning as collapse_warning

EXPORT_NAME = "teacher.safetensors"
LOG_NAME = "train.log"


class JobError(ValueError):
    """A job request that cannot be honoured; one-line message."""


@dataclass
class Job:
    out: str
    recipe: str = ""  # empty when resuming
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    status: str = "starting"  # starting | running | exporting | finished | stopped | failed
    message: str = ""
    train_pid: int = 0
    started: float = 0.0
    ended: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running", "exporting")

    @property
    def log(self) -> Path:
        return Path(self.out) / LOG_NAME

    @property
    def export(self) -> Path:
        return Path(self.out) / EXPORT_NAME

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "mcssl", "train", "--out", self.out]
        return base + (["--resume"] if self.resume else ["--config", self.recipe]) + self.overrides


class Jobs:
    """The job of one runs folder: start, stop, resume, read."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.file = self.root / "job.json"
        self.lock = self.root / "job.lock"

    # ---- reading ------------------------------------------------------------------
    def current(self) -> Job | None:
        try:
            job = Job(**json.loads(self.file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if job.active and not self.locked() and time.time() - job.started > 30:
            job.status, job.message = "failed", "the job's runner is gone (killed or crashed)"
        return job

    def locked(self) -> bool:
        """True while a runner holds the lock (tested without taking it for long)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    # ---- control ------------------------------------------------------------------
    def start(
        self, out: str | Path, recipe: str = "", overrides: list[str] | None = None,
        resume: bool = False,
    ) -> Job:  # fmt: skip
        """Validates the request, then launches the runner in its own session."""
        from mcssl.config import load_config

        if self.locked() or ((job := self.current()) and job.active):
            raise JobError("a training job is already running; stop it first")
        out = Path(out).expanduser().resolve()
        overrides = list(overrides or [])
        if resume:
            if not (out / "last.pt").exists():
                raise JobError(f"{out}: nothing to resume (no last.pt)")
        else:
            load_config(recipe, overrides)  # ConfigError: unknown recipe / bad override
            if (out / "last.pt").exists():
                raise JobError(f"{out} already holds a run; resume it or choose another folder")
        job = Job(str(out), recipe, overrides, resume, started=time.time())
        self._write(job)
        out.mkdir(parents=True, exist_ok=True)
        with open(self.root / "runner.log", "ab") as err:  # the child keeps its own handle
            subprocess.Popen(
                [sys.executable, "-m", "mcssl.jobs", str(self.file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # survives the app; not killed with its process group
            )
        return job

    def stop(self) -> None:
        """Asks training to save a checkpoint and end (SIGTERM; see mcssl.train)."""
        job = self.current()
        if job is None or not job.active or not job.train_pid:
            raise JobError("no training job is running")
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(job.train_pid, signal.SIGTERM)

    def _write(self, job: Job) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(job), indent=1))
        tmp.replace(self.file)


def run(job_file: Path) -> int:
    """The runner: lock, train, export, record."""
    jobs = Jobs(job_file.parent)
    with open(jobs.lock, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 1  # another runner owns the folder; its job.json stays as it is
        job = Job(**json.loads(job_file.read_text()))
        with open(job.log, "ab") as log:
            proc = subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT)
            job.status, job.train_pid = "running", proc.pid
            jobs._write(job)
            code = proc.wait()
        summary = _summary(Path(job.out))
        if code != 0:
            job.status, job.message = "failed", _last_error(job.log) or f"exit code {code}"
        else:
            job.status = "exporting"
            jobs._write(job)
            job.status, job.message = _export(job), ""
            if job.status == "failed":
                job.message = _last_error(job.log)
            elif summary.get("stopped"):
                job.status = "stopped"
        job.ended = time.time()
        jobs._write(job)
    return 0


def _summary(out: Path) -> dict:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _export(job: Job) -> str:
    cmd = [sys.executable, "-m", "mcssl", "export", job.out, "--out", str(job.export)]
    with open(job.log, "ab") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    return "finished" if code == 0 else "failed"


def _last_error(log: Path) -> str:
    """The last 'error:' line the command printed (our CLI's one-line errors)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln for ln in lines if "error:" in ln or "Error" in ln]
    return errors[-1].strip() if errors else ""


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))


__all__ = ["Job", "JobError", "Jobs", "collapse_warning", "describe_device", "run"]
