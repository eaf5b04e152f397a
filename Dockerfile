# The platform's image: the pinned environment built by infra/setup/bootstrap.sh, the checkout
# in /app (what the KubeRay manifests and the evaluation CronJob in infra/k8s/ run).
#   docker build -t clef-platform:latest .                         # CPU (the default)
#   docker build --build-arg CUDA=cuda -t clef-platform:cuda .     # GPU workers (CUDA 12.8)
# Untested here: no container can be built on the development machine (docs/cluster.md); a
# test parses this file and checks that it runs the bootstrap and that the pinned files exist.
ARG CUDA=none

FROM python:3.11-slim-bookworm AS base-none
# PyPI's Linux torch wheels are CUDA builds; the CPU image takes the same version from
# PyTorch's CPU index (2.13.0+cpu satisfies the ==2.13.0 pin).
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS base-cuda
# The project is pinned for Python 3.11, which this base does not ship: deadsnakes has it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*

FROM base-${CUDA}
ENV PYTHON=python3.11 \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# The pinned files first, so the 2 GB environment layer is rebuilt only when a pin changes.
COPY pyproject.toml README.md ./
COPY infra/setup/ infra/setup/
COPY clef_model/ clef_model/
COPY platform/ platform/
RUN apt-get update && apt-get install -y --no-install-recommends curl \
 && bash infra/setup/bootstrap.sh \
 && rm -rf /var/lib/apt/lists/* /root/.cache/pip
COPY jobs/ jobs/
COPY infra/ infra/
COPY data/ data/
ENV PATH=/app/.venv/bin:$PATH
# Ray's container user convention (KubeRay mounts nothing that needs root).
RUN useradd --create-home --uid 1000 ray && chown -R ray /app
USER 1000
CMD ["python", "jobs/pretrain.py", "--help"]
