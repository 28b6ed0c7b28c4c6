# tsm-serve image, built from the wheel `make wheel` writes to dist/ (the package users pip install,
# bundled models included). GPU (the default base, CUDA build of PyTorch):
#   make wheel && docker build -t tsm-serve:gpu .
# CPU only (slim Python, torch from PyTorch's CPU wheel index, no multi-GB CUDA libraries, no compiler):
#   docker build -t tsm-serve:cpu --build-arg BASE_IMAGE=python:3.11-slim \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg C_COMPILER=false .
# Run: docker run --gpus all -p 8000:8000 -p 50051:50051 tsm-serve:gpu
# Other models: mount a store where the server looks first: -v /srv/models:/opt/tsm/model_store:ro
# (./model_store of the working directory; or set TSM_MODEL_STORE). Without one, the bundled models serve.
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# Set for a base image without torch: torch is installed from this index first.
ARG TORCH_INDEX_URL=""
# gcc for torch.compile on CUDA (Triton builds its kernel launchers with it; the runtime base has none):
# without it TSM_ENGINE=auto never tries compile there and says so at start-up.
ARG C_COMPILER=true

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /opt/tsm

RUN if [ -n "${TORCH_INDEX_URL}" ]; then pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.3"; fi

# hadolint ignore=DL3008
RUN if [ "${C_COMPILER}" = "true" ]; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi

# Dependencies first, from pyproject alone (the package's __init__ stands in for the code: it holds the
# version), so a code change does not reinstall grpcio, av and openvino. torch is already there and is kept.
COPY pyproject.toml README.md /opt/tsm/src/
COPY service/__init__.py /opt/tsm/src/service/
RUN pip install "/opt/tsm/src[decord]" \
    && pip uninstall -y tsm-serve \
    && rm -rf /opt/tsm/src

# The wheel, as users install it: code, bundled models, label lists and pages (tests/test_installed.py
# checks that wheel from an empty folder).
COPY dist/tsm_serve-*.whl /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/tsm_serve-*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import torch, av, openvino, onnx, service.__main__"

# Numeric uid/gid, so Kubernetes' runAsNonRoot can verify it. The code and models stay root-owned:
# the server cannot change them.
RUN groupadd --system --gid 10001 tsm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tsm
USER 10001:10001

# HOME=/tmp: caches (torch, CUDA kernels, converted engines: TSM_ENGINE_CACHE_DIR to keep them on a
# volume) land on the one writable path when the root filesystem is read-only. Uploads spool under /tmp too unless TSM_SPOOL_DIR says otherwise.
# NVIDIA_DRIVER_CAPABILITIES: "video" mounts the driver's NVDEC library (TSM_DECODER auto/nvdec);
# the CUDA base images ask for compute and utility only.
ENV HOME=/tmp \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    TSM_HOST=0.0.0.0 \
    TSM_HTTP_PORT=8000 \
    TSM_GRPC_PORT=50051

EXPOSE 8000 50051

# Liveness only (the process answers); /readyz gates traffic in Kubernetes. Python, not curl:
# slim bases have no curl. HTTPS when the server serves it (loopback: no certificate check).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; tls = bool(os.environ.get('TSM_HTTP_TLS_CERT_FILE')); u.urlopen('%s://127.0.0.1:%s/healthz' % ('https' if tls else 'http', os.environ.get('TSM_HTTP_PORT', '8000')), timeout=4, context=ssl._create_unverified_context() if tls else None)"]

# Exec form: tsm-serve is PID 1 and gets SIGTERM itself, which starts the drain.
ENTRYPOINT ["tsm-serve"]
CMD ["serve"]
