# syntax=docker/dockerfile:1
# The training image: the daily run on a GPU (Cloud Run job, docs/deploy.md).
#   docker build -f deploy/docker/train.Dockerfile -t REGION-docker.pkg.dev/PROJECT/dailyrec/train:TAG .
# The environment only: CUDA 13 runtime, Python 3.11 and the project's pinned dependency set
# with implicit's CUDA build. The code and the day's state (params.yaml, dvc.lock) come from the
# git checkout that run_job.py clones at start, so the commit that MLflow records is the code
# that ran, and the day's commit can be pushed back.

# CUDA 13.0, as the Cloud Run GPU driver (580) supports; implicit's wheel is built for CUDA 13.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Ubuntu 24.04 ships Python 3.12 only; the deadsnakes archive has 3.11, the project's version.
# git: the job clones the project and pushes the day's commit.
# Unpinned apt packages on purpose: they follow the base image's security updates, while what
# shapes results (the Python set) is pinned by requirements.lock.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv git ca-certificates \
    && apt-get purge -y software-properties-common gpg-agent \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

# What the install needs, nothing else: a change elsewhere does not rebuild this layer.
WORKDIR /opt/dailyrec/src
COPY pyproject.toml requirements.lock README.md ./
COPY dailyrec/ dailyrec/
COPY stages/ stages/
COPY serving/ serving/
COPY tools/ tools/
COPY deploy/install.sh deploy/install.sh
RUN deploy/install.sh --venv /opt/dailyrec/venv --extra gpu --python python3.11 --no-cache \
    && cp requirements.lock /opt/dailyrec/requirements.lock

COPY deploy/docker/run_job.py /opt/dailyrec/run_job.py

# The job runs as a user without privileges; /srv/dailyrec is where the checkout goes.
RUN useradd --create-home --uid 10001 --user-group dailyrec \
    && mkdir -p /srv/dailyrec \
    && chown dailyrec:dailyrec /srv/dailyrec
USER 10001:10001
WORKDIR /srv/dailyrec
ENV PATH=/opt/dailyrec/venv/bin:$PATH \
    DAILYREC_WORKDIR=/srv/dailyrec/project \
    DAILYREC_IMAGE_LOCK=/opt/dailyrec/requirements.lock

ENTRYPOINT ["/opt/dailyrec/venv/bin/python", "/opt/dailyrec/run_job.py"]
# The scheduler's command, run inside the checkout (the job may pass --date or --from/--to).
CMD ["python", "-m", "stages.daily", "--commit"]
