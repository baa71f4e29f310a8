# Tachograph's image: the platform (the `tacho` CLI: API, ingest workers, projector) in a
# virtualenv at /opt/tacho, run as the unprivileged user tacho (uid 10001). docs/deploy.md.
#
#   docker build -t tachograph .                    # FROM the official python:3.11-slim-bookworm
#   podman build --build-arg BASE=IMAGE -t tachograph .
#
# BASE is any Debian-family image with python3 (3.11+) and its venv module: CI builds FROM a base
# made of Debian bookworm's own packages with debootstrap (scripts/build-image.sh).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# a C compiler and headers for the optional accelerators (domain/_sha256batch.c, _sqlitescan.c),
# in this stage only; Python's headers come with the official image, else from python3-dev
RUN set -eux; \
    pkgs="gcc libc6-dev libssl-dev libsqlite3-dev"; \
    inc="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    [ -f "$inc/Python.h" ] || pkgs="$pkgs python3-dev"; \
    apt-get update -q; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/tacho
WORKDIR /src
# the dependencies first: this layer changes only with pyproject.toml. The optional build secret
# `ca` is a CA bundle for pip behind a TLS-inspecting proxy (never stored in a layer).
COPY pyproject.toml setup.py README.md ./
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt; \
    /opt/tacho/bin/pip install --disable-pip-version-check -q --upgrade pip setuptools wheel; \
    /opt/tacho/bin/pip install --disable-pip-version-check -q -r /tmp/requirements.txt
COPY domain domain
COPY tachograph tachograph
COPY ingest ingest
COPY projections projections
COPY replay replay
COPY api api
COPY examples examples
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/pip set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /opt/tacho/bin/pip install --disable-pip-version-check -q --no-deps --no-build-isolation . ; \
    /opt/tacho/bin/python -c 'from domain import merkle; from domain.stores import sqlite; print("C accelerators:", bool(merkle.NATIVE), bool(sqlite._sqlitescan))'

FROM ${BASE}
RUN set -eux; \
    groupadd --system --gid 10001 tacho; \
    useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin tacho; \
    install -d -o 10001 -g 10001 -m 0700 /data /keys /analytics
COPY --from=build /opt/tacho /opt/tacho
ENV PATH=/opt/tacho/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TACHO_DATA_DIR=/data
# numeric, so that runtimes which check "not root" (Kubernetes runAsNonRoot) can tell
USER 10001:10001
WORKDIR /data
# the HTTP API (tacho serve --port 8080) and an ingest worker's metrics (--metrics-port 9400)
EXPOSE 8080 9400
ENTRYPOINT ["tacho"]
CMD ["--help"]
