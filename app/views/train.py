"""Train: launch ``mcssl train`` as a separate process (one job at a time, state on disk),
watch it live (progress, losses, log, reconstruction previews), stop it, resume it; its
export then appears in the checkpoint picker."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
from auth import PathRefused, check_training, rules
from common import SETTINGS, keep, runs_dir
from PIL import Image

from mcssl.config import CONFIG_DIR, ConfigError, load_config
from mcssl.jobs import Job, JobError, Jobs, collapse_warning, describe_device

LOSSES = ("loss", "loss_recon", "loss_concept", "loss_cls")
GPU_ONLY = ("paper_vits16", "reference_vits16")
# rough wall times (docs/BENCHMARKS.md, checkpoints/README.md: the 2-core EPYC VM)
TIMES = {
    "smoke": "seconds on a CPU",
    "demo_cpu": "about 12 minutes on 2 CPU cores (180 steps)",
    "bundled_cpu": "about 78 minutes on one CPU core beside a second run (1440 steps)",
    "paper_vits16": "days to weeks on GPUs; on a 2-core CPU ~13 images/s, i.e. ~4.6 days for "
    "10,000 images x 500 epochs and ~1.6 years for ImageNet",
    "reference_vits16": "longer than paper_vits16 (800 epochs, multi-crop): GPUs only",
}


def describe(recipe: str) -> str:
    """The recipe file's opening comment (what it is), one paragraph."""
    lines = []
    for line in (CONFIG_DIR / f"{recipe}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def recipes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_metrics(out: Path) -> list[dict]:
    """Rows of metrics.jsonl (a line being written is skipped)."""
    rows = []
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def log_tail(path: Path, n: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]  # tqdm uses \r
    return "\n".join(lines[-n:])


def series(
    rows: list[dict], names: tuple[str, ...], title: str = "", y_title: str = "loss"
) -> go.Figure:
    """Lines of metrics.jsonl fields against the step."""
    fig = go.Figure()
    steps = [r["step"] for r in rows]
    for name in names:
        if rows and name in rows[-1]:
            fig.add_scatter(x=steps, y=[r.get(name) for r in rows], name=name, mode="lines+markers")
    fig.update_layout(height=300, xaxis_title="training step", yaxis_title=y_title, title=title,
                      margin={"t": 30, "b": 40})  # fmt: skip
    return fig


def loss_figure(rows: list[dict]) -> go.Figure:
    return series(rows, LOSSES)


def _form(jobs: Jobs) -> None:
    names = recipes()
    recipe = st.selectbox("Recipe", names, key="recipe")
    st.caption(f"{describe(recipe)} **Time:** {TIMES.get(recipe, 'unknown')}.")
    if recipe in GPU_ONLY and not describe_device("auto").startswith("cuda"):
        st.warning(f"{recipe} is a GPU recipe: on this CPU it would take days to years. "
                   "Use smoke or demo_cpu here, or a machine with GPUs.")  # fmt: skip
    with st.form("launch"):
        data = st.text_input("Data (folder, file list, samples, synthetic:N, cache:FILE.npy; "
                             "empty = recipe's)", key="train_data")  # fmt: skip
        default_out = str(runs_dir() / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
        out = st.text_input("Output folder", key="train_out", placeholder=default_out)
        text = st.text_area("Overrides (key=value, one per line)", key="overrides",
                            placeholder="optim.epochs=5\ndata.pipeline=device")  # fmt: skip
        go_ = st.form_submit_button("Start training", type="primary")
    if not go_:
        return
    overrides = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if data.strip():
        overrides.append(f"data.path={data.strip()}")
    try:
        check_training(out.strip() or default_out, recipe, overrides)
        jobs.start(out.strip() or default_out, recipe, overrides)
    except (ConfigError, JobError, PathRefused) as e:
        st.error(str(e))
        return
    st.rerun()


def _status(job: Job) -> None:
    out = Path(job.out)
    rows = read_metrics(out)
    st.subheader(f"{job.status}: {out.name}")
    if job.message:
        (st.error if job.status == "failed" else st.info)(job.message)
    try:
        cfg = load_config(str(out / "config.yaml"))
        total = cfg.optim.epochs
    except (ConfigError, OSError):
        cfg, total = None, 0
    epoch = rows[-1]["epoch"] if rows else 0.0
    step = rows[-1]["step"] if rows else 0
    done = job.status == "finished"
    frac = 1.0 if done else min(1.0, epoch / total) if total else 0.0
    if rows or done:
        st.progress(frac, text=f"step {step} · epoch {epoch:.2f} of {total}")
    else:
        st.progress(0.0, text="starting: building the model and reading the data…")
    cols = st.columns(3)
    cols[0].metric("loss", f"{rows[-1]['loss']:.4f}" if rows else "-")
    cols[1].metric("images/s", f"{rows[-1]['images_per_s']:.1f}" if rows else "-")
    cols[2].metric("device", describe_device(cfg.run.device if cfg else "auto"))
    if rows and rows[-1].get("collapse"):
        st.warning(collapse_warning(rows[-1]["collapse"]))
    if rows:
        st.plotly_chart(loss_figure(rows), key="losses")
        health = [r for r in rows if "concepts_in_use" in r]
        scores = [r for r in rows if "concept_ari" in r]
        left, right = st.columns(2)
        if health:
            left.plotly_chart(series(health, ("concepts_in_use",), "pseudo-concepts in use",
                                     "pseudo-concepts"), key="health")  # fmt: skip
        if scores:
            right.plotly_chart(series(scores, ("concept_ari", "concept_miou"), "concept score",
                                      "score"), key="scores")  # fmt: skip
    previews = sorted((out / "previews").glob("*.png"))
    if previews:
        when = previews[-1].stem.replace("_", " ")
        st.markdown(f"**Reconstruction preview** at {when}: rows = clean · corrupted (GMML) · "
                    "reconstructed; one column per image")  # fmt: skip
        pic = Image.open(previews[-1])
        scale = max(1, 720 // pic.width)  # tiny crops: enlarge, pixels kept sharp
        st.image(pic.resize((pic.width * scale, pic.height * scale), Image.Resampling.NEAREST))
    st.code(log_tail(job.log) or "(no output yet)", language=None)
    if job.status == "finished" and job.export.exists():
        st.success(f"Exported {job.export} — pick it under Model on the other pages.")
    st.caption("Command: " + shlex.join(job.command()[1:]))


def render() -> None:
    keep("train_data", "train_out", "overrides", *SETTINGS)  # kept while a job runs
    keep("recipe", defaults={"recipe": "smoke"})
    if not rules().training:
        st.info("Training from the app is switched off on this server (MCSSL_APP_TRAINING=0).")
        return
    jobs = Jobs(runs_dir())
    job = jobs.current()
    st.caption(f"Runs folder: {runs_dir()}")
    if job is not None and job.active:
        if st.button("Stop (saves a checkpoint)", key="stop"):
            try:
                jobs.stop()
            except JobError as e:
                st.error(str(e))
    else:
        _form(jobs)
        if (
            job is not None
            and job.status in ("stopped", "failed")
            and (Path(job.out) / "last.pt").exists()
        ) and st.button(f"Resume {Path(job.out).name}", key="resume"):
            try:
                jobs.start(job.out, resume=True)
                st.rerun()
            except JobError as e:
                st.error(str(e))
    if job is None:
        st.info("No training job yet.")
        return
    st.fragment(_live, run_every=2.0 if job.active else None)(jobs, job.active)


def _live(jobs: Jobs, was_active: bool) -> None:
    """Re-read from disk on every tick; a job that has just ended refreshes the whole page."""
    job = jobs.current()
    if job is None:
        return
    _status(job)
    if was_active and not job.active:
        st.rerun(scope="app")
