# Container image of backup-watcher.
#
#   docker build -t backup-watcher .          (or: podman build -t backup-watcher .)
#
# BASE_IMAGE is used by both stages. Any Debian-like image with python3 (3.11 or newer), its venv
# module and ca-certificates works: the official python image (the default) or a plain Debian
# with python3, python3-venv and ca-certificates (deploy/scripts/image-test.sh builds on one).
# The builder turns deploy/requirements.lock and the project into wheels; the final stage installs
# only those wheels into /opt/venv, with no index and no compiler. docs/deploy.md has the details.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS builder

# Index and TLS settings of the build machine, forwarded as build args when it needs them (a
# mirror, a proxy's CA bundle mounted into the build); unset by default, so pip uses PyPI.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python3 -m venv /opt/build

# Dependencies first, so that a change to the code reuses this layer.
COPY deploy/requirements.lock /wheels/requirements.lock
RUN /opt/build/bin/python -m pip wheel --only-binary=:all: --wheel-dir=/wheels \
        --requirement=/wheels/requirements.lock

COPY pyproject.toml README.md ./
COPY watcher/ watcher/
RUN /opt/build/bin/python -m pip wheel --no-deps --wheel-dir=/wheels .


FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="backup-watcher" \
      org.opencontainers.image.description="Watches Azure Backup jobs and exposes their outcomes as Prometheus metrics" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/backup-watcher/backup-watcher" \
      org.opencontainers.image.documentation="https://github.com/backup-watcher/backup-watcher/blob/main/docs/deploy.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# The wheels are bind-mounted from the builder, so none of them stays in a layer. pip is removed
# from the runtime venv afterwards: nothing installs anything at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir --no-index --find-links=/wheels \
        --requirement=/wheels/requirements.lock backup-watcher \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools

# A fixed numeric user, so that Kubernetes' runAsNonRoot can verify it and volume ownership is
# predictable. -l: no lastlog/faillog entry, which would be a large sparse file for a high UID.
RUN groupadd --gid 10001 backup-watcher \
    && useradd -l --uid 10001 --gid 10001 --home-dir /var/lib/backup-watcher --no-create-home \
        --shell /usr/sbin/nologin backup-watcher \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/backup-watcher

# The root filesystem may be read-only: bytecode was compiled at install time and is never
# written at run time; state lives in the volume below, which is also the working directory, so
# a relative store.path lands there (`demo` keeps its store under TMPDIR unless
# WATCHER_STORE_PATH names one); TMPDIR is /tmp, which must then be a tmpfs
# (docker run --tmpfs /tmp) or an emptyDir (Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/backup-watcher \
    TMPDIR=/tmp

WORKDIR /var/lib/backup-watcher
VOLUME ["/var/lib/backup-watcher"]
USER 10001:10001
EXPOSE 9464
STOPSIGNAL SIGTERM

# Needs no tool beyond the image's Python. Set WATCHER_HEALTHCHECK_URL when http.listen is not
# reachable as 127.0.0.1:9464.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('WATCHER_HEALTHCHECK_URL', 'http://127.0.0.1:9464/healthz'), timeout=4)"]

ENTRYPOINT ["backup-watcher"]
CMD ["run", "--config", "/etc/backup-watcher/config.yaml"]
