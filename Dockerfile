# syntax=docker/dockerfile:1
# SDXL Turbo service image. Two targets:
#   docker build -t sdxl-turbo-service .                                  GPU (the default, last stage)
#   docker build --target cpu -t sdxl-turbo-service:cpu .                 CPU only
# One image, two jobs: `serve` (default) and `build-engines` (docker/entrypoint.sh); docs/deploy.md.
#
# Layers are ordered by how often they change: OS and Python, then torch, then the other
# dependencies (from pyproject.toml only), then the code. A code change rebuilds only the last.

# One CUDA major (13) throughout: the base image, torch, TensorRT and onnxruntime-gpu, all pinned in
# constraints/gpu.txt. The host needs NVIDIA driver 580 or newer (CUDA 13.x; the label below says so,
# and the base image's NVIDIA_REQUIRE_CUDA makes the NVIDIA Container Toolkit refuse an older one).
# Ubuntu 24.04 brings Python 3.12.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- GPU: Python on the CUDA runtime --------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-python
LABEL org.sdxl-turbo.nvidia-driver.minimum="580" \
      org.sdxl-turbo.cuda.major="13"
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

FROM gpu-python AS gpu-deps
# TensorRT's libraries are on NVIDIA's index (PyPI has only a stub that fetches them from there).
ARG NVIDIA_INDEX_URL=https://pypi.nvidia.com
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints/gpu.txt /tmp/build/constraints/gpu.txt
# torch from PyPI: its default Linux wheel of the pinned version is a CUDA 13.0 build.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /tmp/build/constraints/gpu.txt torch
COPY pyproject.toml docker/requirements.py /tmp/build/
# The project's dependencies with its gpu extra (onnxruntime-gpu, TensorRT), all through the constraints.
RUN --mount=type=cache,target=/root/.cache/pip \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml gpu > /tmp/build/requirements.txt \
    && pip install -c /tmp/build/constraints/gpu.txt --extra-index-url "${NVIDIA_INDEX_URL}" -r /tmp/build/requirements.txt

# ---- CPU: the same install as `make install`, without the test and bench extras -------------
FROM ${PYTHON_IMAGE} AS cpu-python
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

FROM cpu-python AS cpu-deps
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints/cpu.txt /tmp/build/constraints/cpu.txt
# torch from the CPU index, so no CUDA libraries are pulled in; the version comes from the constraints.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /tmp/build/constraints/cpu.txt --index-url "${TORCH_CPU_INDEX_URL}" torch
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN --mount=type=cache,target=/root/.cache/pip \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml onnx openvino > /tmp/build/requirements.txt \
    && pip install -c /tmp/build/constraints/cpu.txt -r /tmp/build/requirements.txt

# ---- the images --------------------------------------------------------------------------------
# The two runtime stages below differ only in their base and the venv they copy; the rest must stay
# identical (tests/test_dockerfile.py checks it).
FROM cpu-python AS cpu
COPY --from=cpu-deps /opt/venv /opt/venv
# Volume directories exist before VOLUME and belong to the service user, so new volumes do too.
RUN groupadd --gid 10001 sdxl \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/sdxl --shell /usr/sbin/nologin sdxl \
    && mkdir -p /data/huggingface /data/engines /data/image-cache /data/presets \
    && chown -R 10001:10001 /data
# The image cache is a subdirectory: the service makes it private (0700), which it can only do to
# a directory it owns, and a mounted volume's root may belong to root.
ENV SDXL_HOST=0.0.0.0 \
    SDXL_PORT=5000 \
    SDXL_ENGINE_DIR=/data/engines \
    SDXL_CACHE_DIR=/data/image-cache/images \
    SDXL_PRESETS_DIR=/data/presets \
    HF_HOME=/data/huggingface \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/data/huggingface", "/data/engines", "/data/image-cache"]
WORKDIR /app
COPY . /app
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["/app/docker/entrypoint.sh", "healthcheck"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["serve"]

FROM gpu-python AS gpu
# From here on, the same as the cpu stage above.
COPY --from=gpu-deps /opt/venv /opt/venv
RUN groupadd --gid 10001 sdxl \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/sdxl --shell /usr/sbin/nologin sdxl \
    && mkdir -p /data/huggingface /data/engines /data/image-cache /data/presets \
    && chown -R 10001:10001 /data
ENV SDXL_HOST=0.0.0.0 \
    SDXL_PORT=5000 \
    SDXL_ENGINE_DIR=/data/engines \
    SDXL_CACHE_DIR=/data/image-cache/images \
    SDXL_PRESETS_DIR=/data/presets \
    HF_HOME=/data/huggingface \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/data/huggingface", "/data/engines", "/data/image-cache"]
WORKDIR /app
COPY . /app
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["/app/docker/entrypoint.sh", "healthcheck"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["serve"]
