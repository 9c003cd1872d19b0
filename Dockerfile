# syntax=docker/dockerfile:1
# Moodwire's image, in two targets that share one source stage:
#   cpu  (the default: the last stage)  docker build -t moodwire .
#   cuda (NVIDIA GPU, CUDA 12)           docker build --target cuda -t moodwire:cuda .
#                                        docker run --gpus all moodwire:cuda worker
# Both run as the unprivileged user `moodwire` (uid 10001), which owns only its data
# directory /var/lib/moodwire (compose mounts volumes there); the installed code is root's.
# FAISS comes from exactly one extra: `cpu` (faiss-cpu) or `gpu` (faiss-gpu-cu12).

ARG PYTHON_IMAGE=python:3.11-slim
# The CUDA runtime base; torch's CUDA wheels and faiss-gpu-cu12 bring their own CUDA
# libraries (nvidia-* wheels), the host brings the driver (NVIDIA Container Toolkit).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# Where torch's CUDA 12 wheels come from (cu128 matches the base above).
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
# uv installs a standalone CPython 3.11 on the CUDA base (Ubuntu 24.04 ships 3.12 only).
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9

# -- the source, the same for both targets -------------------------------------------
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY moodwire moodwire
COPY stream stream
COPY learner learner
COPY retrieval retrieval
COPY dashboard dashboard
COPY state state

# -- CPU: build a virtual environment -------------------------------------------------
FROM ${PYTHON_IMAGE} AS build-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=source /src /src
RUN python -m venv /opt/moodwire \
 && /opt/moodwire/bin/pip install -c /src/constraints.txt \
      --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && /opt/moodwire/bin/pip install -c /src/constraints.txt "/src[cpu,postgres]"

# -- CUDA: build a virtual environment on the CUDA base --------------------------------
FROM ${UV_IMAGE} AS uv
FROM ${CUDA_IMAGE} AS build-cuda
ARG TORCH_CUDA_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed
COPY --from=uv /uv /usr/local/bin/uv
COPY --from=source /src /src
RUN uv python install 3.11 \
 && uv venv --seed --python 3.11 /opt/moodwire \
 && /opt/moodwire/bin/pip install -c /src/constraints.txt \
      --index-url "${TORCH_CUDA_INDEX}" "torch==2.13.0" \
 && /opt/moodwire/bin/pip install -c /src/constraints.txt "/src[gpu,postgres]"

# -- CUDA runtime -------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS cuda
RUN groupadd --gid 10001 moodwire \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/moodwire \
      --shell /usr/sbin/nologin moodwire \
 && mkdir -p /var/lib/moodwire/registry /var/lib/moodwire/learner /var/lib/moodwire/index \
 && chown -R moodwire:moodwire /var/lib/moodwire
COPY --from=build-cuda /opt/python /opt/python
COPY --from=build-cuda /opt/moodwire /opt/moodwire
ENV PATH=/opt/moodwire/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false MOODWIRE_DATA_DIR=/var/lib/moodwire MOODWIRE_DEVICE=cuda
WORKDIR /home/moodwire
USER 10001:10001
ENTRYPOINT ["moodwire"]
CMD ["--help"]

# -- CPU runtime (the default target) -----------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --gid 10001 moodwire \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/moodwire \
      --shell /usr/sbin/nologin moodwire \
 && mkdir -p /var/lib/moodwire/registry /var/lib/moodwire/learner /var/lib/moodwire/index \
 && chown -R moodwire:moodwire /var/lib/moodwire
COPY --from=build-cpu /opt/moodwire /opt/moodwire
ENV PATH=/opt/moodwire/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false MOODWIRE_DATA_DIR=/var/lib/moodwire
WORKDIR /home/moodwire
USER 10001:10001
ENTRYPOINT ["moodwire"]
CMD ["--help"]
