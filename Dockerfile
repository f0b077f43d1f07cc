# syntax=docker/dockerfile:1
# Evenflow's image: wheels are built in the first stage, the final stage
# installs only those wheels (no compiler, no source tree, no pip cache) and
# runs as an unprivileged user. `evenflow` is PID 1 in exec form, so the
# SIGTERM Kubernetes sends reaches it and starts the drain.
#
# Build:  docker build -t evenflow:0.1.0 .
# Run:    docker run --rm -v "$PWD/evenflow.yaml:/etc/evenflow/evenflow.yaml:ro" -p 9901:9901 evenflow:0.1.0
#
# The base is pinned by its exact Python and Debian release; for byte-for-byte
# reproducible builds pin its digest too, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:... .
# (`docker buildx imagetools inspect python:3.11.13-slim-bookworm` prints it).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The project metadata first, so the dependency layer is cached across code edits.
COPY pyproject.toml README.md ./
COPY evenflow ./evenflow
COPY proxy ./proxy
COPY balancer ./balancer
COPY discovery ./discovery
# Evenflow and every dependency as wheels (uvloop, aiohttp, ... have
# manylinux wheels for amd64 and arm64, so no compiler is needed here).
RUN pip wheel . -w /wheels

FROM ${PYTHON_IMAGE}
# VERSION must be pyproject.toml's version (tests/deploy checks it);
# REVISION and SOURCE are for CI to fill in (the commit, the repository URL).
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="evenflow" \
      org.opencontainers.image.description="Connection-aware L4/L7 proxy that keeps long-lived connections even across Kubernetes pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}"
# No .pyc writes at run time (the chart mounts the root file system read-only),
# log lines leave at once.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheels are bind-mounted from the build stage, never copied into a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "evenflow==${VERSION}" \
 && groupadd --system --gid 10001 evenflow \
 && useradd --system --uid 10001 --gid evenflow --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin evenflow \
 && mkdir -p /etc/evenflow
# A numeric user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
# The admin API (/healthz, /readyz, /metrics, /backends); listener ports come from the config.
EXPOSE 9901
ENTRYPOINT ["evenflow"]
CMD ["run", "--config", "/etc/evenflow/evenflow.yaml"]
