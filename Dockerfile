# redis-backup: the service (`redis-backup run`), with redis-server in the image for restores,
# `verify --deep` and VERIFY_INTERVAL_HOURS. Build: docker build -t redis-backup .
# Kubernetes manifests, the Grafana dashboard and the alert rules are in deploy/ (deploy/README.md).

# The metrics port (/metrics, /healthz, /readyz, /status): the one place the image sets it.
# tests/test_packaging.py checks it against METRICS_PORT's default and every manifest in deploy/.
ARG METRICS_PORT=10379

# Debian bookworm: its redis-server (7.0) is the one the tests run against; a newer primary's RDB
# version needs a newer server (REDIS_SERVER_BIN, README).

# ---- builder: wheels of the package (with the C stream scanner) and of its dependencies
FROM python:3.11-slim-bookworm AS builder
# Debian's own versions of the toolchain: pinning them would break the build at every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY redis_backup ./redis_backup
# The extension is optional in setup.py (a machine without a compiler still installs); here it must
# be built, so the wheel is checked for it.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -c "import glob, sys, zipfile; w, = glob.glob('/wheels/redis_backup-*.whl'); \
names = zipfile.ZipFile(w).namelist(); \
sys.exit(0 if any(n.startswith('redis_backup/wire/_scan') for n in names) else 'no C scanner in ' + w)"

# ---- the image: no compiler, the wheels installed, a non-root user
FROM python:3.11-slim-bookworm
ARG METRICS_PORT
LABEL org.opencontainers.image.title="redis-backup" \
      org.opencontainers.image.description="Continuous, point-in-time-restorable backup of a Redis primary"
# redis-server loads chains for restores and deep verifies (REDIS_SERVER_BIN); tini is PID 1 so that
# SIGTERM reaches the service and the scratch servers it starts are reaped. Debian's versions, as above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/redis_backup-*.whl \
    && rm -rf /wheels \
    && python -c "import redis_backup.wire._scan" \
    && groupadd --system --gid 10001 redis-backup \
    && useradd --system --uid 10001 --gid redis-backup --home-dir /data --shell /usr/sbin/nologin redis-backup \
    && mkdir -p /data \
    && chown redis-backup:redis-backup /data
ENV BACKUP_DIR=/data \
    METRICS_PORT=${METRICS_PORT} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME /data
WORKDIR /data
EXPOSE ${METRICS_PORT}
USER 10001:10001
# /healthz: 200 while the process and its tasks run (urlopen raises on 503 or no answer: exit 1).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['METRICS_PORT'] + '/healthz', timeout=5)"]
ENTRYPOINT ["tini", "--", "redis-backup"]
CMD ["run"]
