# syntax=docker/dockerfile:1
# Build stage: compilers and pip live here only.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# The runtime lock holds the `otel` extra: tracing is one OTEL_* setting away in the image.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
COPY bakkt_sandbox ./bakkt_sandbox
RUN /opt/venv/bin/pip install --no-deps . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# Runtime stage: the virtualenv, the migrations, a non-root user; no build tools.
FROM python:3.11-slim-bookworm
# The source revision, shown by the fiat_onramp_build_info metric (`--build-arg REVISION=`).
ARG REVISION=unknown
ENV PATH=/opt/venv/bin:$PATH \
    FIAT_ONRAMP_REVISION=$REVISION \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_ENV=production \
    FIAT_ONRAMP_MIGRATIONS=/srv/migrations
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /srv --shell /usr/sbin/nologin app
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
COPY migrations ./migrations
USER 10001:10001
# 8000: the API; 9000: INTERNAL_PORT when set (metrics, docs, probes).
EXPOSE 8000 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
CMD ["fiat-onramp", "serve", "--host", "0.0.0.0", "--port", "8000"]
