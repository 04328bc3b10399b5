# syntax=docker/dockerfile:1
# The serving image: the recommendations API under granian, serving/server.py (docs/serving.md,
# docs/deploy.md).
#   docker build -f deploy/docker/serve.Dockerfile -t REGION.azurecr.io/dailyrec/serve:TAG .
# The same image runs the MLflow tracking server on Cloud Run (docs/deploy.md): mlflow is one of
# the project's pinned dependencies.

FROM python:3.11-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY dailyrec/ dailyrec/
COPY stages/ stages/
COPY serving/ serving/
COPY tools/ tools/
COPY deploy/install.sh deploy/install.sh
RUN deploy/install.sh --venv /opt/dailyrec/venv --python python3.11 --no-cache

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/dailyrec/venv/bin:$PATH \
    DAILYREC_BIND=0.0.0.0:8000 \
    DAILYREC_STATE_DIR=/var/lib/dailyrec \
    HOME=/var/lib/dailyrec
COPY --from=build /opt/dailyrec/venv /opt/dailyrec/venv
# No privileges; the alert throttle's state is the only file the API writes.
RUN useradd --no-create-home --uid 10001 --user-group dailyrec \
    && mkdir -p /var/lib/dailyrec \
    && chown dailyrec:dailyrec /var/lib/dailyrec
USER 10001:10001
WORKDIR /var/lib/dailyrec
EXPOSE 8000
# /healthz answers while the process runs (Redis down is /readyz's business, not a restart's).
# The slim image has no curl: Python's own client does the request.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "serving.server"]
