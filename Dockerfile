# mcssl on a GPU server: the concept explorer by default, or `mcssl train` / `torchrun`.
#   docker build -t mcssl .
#   docker run --gpus all -p 127.0.0.1:8501:8501 -v $PWD/runs:/runs -v /data:/data mcssl
#   docker logs CONTAINER 2>&1 | grep "app token"   # printed once at start; or -e MCSSL_APP_TOKEN
#   docker run --gpus all --shm-size 16g -v $PWD/runs:/runs -v /data:/data mcssl \
#     torchrun --nproc_per_node 8 -m mcssl train --config paper_vits16 --out /runs/vits16 data.path=/data
# The torch wheels carry their own CUDA libraries; the base image only brings the driver hooks.
FROM nvidia/cuda:13.0.1-base-ubuntu24.04

ARG PYTHON_VERSION=3.11
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MCSSL_RUNS=/runs \
    MCSSL_CHECKPOINTS=/checkpoints

# curl is for the health check. Ubuntu package versions move under a fixed tag, so unpinned:
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# A standalone CPython 3.11 (python-build-standalone via uv) in its own virtual environment
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv /opt/venv --python "${PYTHON_VERSION}"

WORKDIR /opt/mcssl
# the same pins as the README's commands, with faiss-gpu instead of faiss-cpu
COPY requirements.txt requirements-gpu.txt ./
RUN uv pip install --python /opt/venv/bin/python -r requirements-gpu.txt

COPY pyproject.toml README.md ./
COPY .streamlit ./.streamlit
COPY mcssl ./mcssl
COPY app ./app
COPY checkpoints ./checkpoints
RUN uv pip install --python /opt/venv/bin/python --no-deps -e . \
    && useradd --create-home --uid 1000 mcssl \
    && mkdir -p /runs /data /checkpoints \
    && chown mcssl:mcssl /runs /data /checkpoints

USER 1000:1000
VOLUME ["/runs", "/data", "/checkpoints"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["curl", "-fsS", "--max-time", "4", "http://127.0.0.1:8501/_stcore/health"]
# Bound to 0.0.0.0 inside the container, the app asks for a token (MCSSL_APP_TOKEN, or one made
# and printed by mcssl.access at start) and reads paths under /runs, /data and /checkpoints only
# (MCSSL_DATA_ROOTS); MCSSL_APP_TRAINING=0 switches its Train page off. docs/DOCKER.md.
CMD ["python", "-m", "mcssl.access", \
     "streamlit", "run", "app/serve.py", "--server.address=0.0.0.0", "--server.port=8501"]
