"""The cloud half's deploy tool (docs/deploy.md): the GPU job on Cloud Run, the Azure trigger.

    python -m tools.deploy gcp --dry-run     print the Cloud Run job request built from params.yaml
                                             and the environment; send nothing
    python -m tools.deploy gcp               send it: create or update the job (Cloud Run Admin API
                                             v2 UpdateJob with allowMissing), with Google's
                                             application-default credentials
    python -m tools.deploy azure-package --out trigger.zip
                                             the Azure Functions app (deploy/azure and the project's
                                             notifier), for `az functionapp deployment source
                                             config-zip`

Terraform (deploy/terraform/gcp) creates the job once, with its identity, network and secrets;
from then on this tool owns the job's template (image, GPU, settings), so a release is one command
and the job stays a configuration of the same code: the image runs `python -m stages.daily
--commit` in a checkout of this repository.

What comes from where:
- params.yaml: `train.device`. `cpu` runs the job without a GPU; `gpu` and `auto` attach one and
  set DAILYREC_REQUIRE_GPU, so a machine that cannot load CUDA fails the run at once instead of
  training on the CPU until the task's time limit.
- the environment: every name in SETTINGS below (endpoints, names, the image), read here and
  written into the job as plain values. Secrets are never read here: the job names them in
  Secret Manager (SECRETS), and Cloud Run resolves them when an execution starts. A URL that
  carries a password is refused.

Exit status: 0 done, 2 a setting is missing or unusable, 69 the Cloud Run API refused or did not
answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dailyrec.core import settings
from dailyrec.core.errors import ConfigError
from dailyrec.model import settings as model_settings

ROOT = Path(__file__).resolve().parents[1]
AZURE_APP_DIR = ROOT / "deploy" / "azure"
RUN_API = "https://run.googleapis.com"
EXIT_CONFIG, EXIT_UNAVAILABLE = 2, 69


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None  # None: required
    meaning: str


# The job's settings from the environment, each named once (docs/deploy.md's table lists them).
SETTINGS = (
    Setting("DAILYREC_GCP_PROJECT", None, "the Google Cloud project id"),
    Setting("DAILYREC_GCP_REGION", "europe-west4", "the job's region (one with the GPU type)"),
    Setting("DAILYREC_GCP_JOB", "dailyrec-daily", "the Cloud Run job's name"),
    Setting("DAILYREC_TRAIN_IMAGE", None,
            "the training image, e.g. europe-west4-docker.pkg.dev/PROJECT/dailyrec/train:TAG"),
    Setting("DAILYREC_GCP_GPU_TYPE", "nvidia-rtx-pro-6000",
            "the GPU: nvidia-rtx-pro-6000 (driver 580, CUDA 13) or nvidia-l4 (see docs/deploy.md)"),
    Setting("DAILYREC_GCP_JOB_SERVICE_ACCOUNT", "",
            "the job's identity; default dailyrec-job@PROJECT.iam.gserviceaccount.com"),
    Setting("DAILYREC_GCP_NETWORK", "dailyrec", "VPC network of the job's egress (Cloud NAT)"),
    Setting("DAILYREC_GCP_SUBNET", "dailyrec-jobs", "its subnetwork"),
    Setting("DAILYREC_GCP_TASK_TIMEOUT_MINUTES", "60",
            "the run's time limit; 60 is Cloud Run's most for a GPU task"),
    Setting("DAILYREC_GIT_URL", None, "the project's git repository (https, no credentials)"),
    Setting("DAILYREC_GIT_BRANCH", "main", "the branch the job checks out and commits the day to"),
    Setting("DAILYREC_DVC_URL", "",
            "the gcs DVC remote's URL when the bucket is not the committed gs://dailyrec-dvc/cache"),
    Setting("MLFLOW_TRACKING_URI", None, "the MLflow server (its Cloud Run URL)"),
    Setting("REDIS_URL", None, "the serving Redis, rediss://HOST:10000/0 (no password in it)"),
    Setting("REDIS_KEY_PREFIX", "", "the Redis key prefix, when not the default dailyrec"),
    Setting("DAILYREC_SMTP_HOST", "", "mail server for alerts and the report (unset: mail off)"),
    Setting("DAILYREC_SMTP_PORT", "", "its port"),
    Setting("DAILYREC_SMTP_TLS", "", "none, starttls or ssl"),
    Setting("DAILYREC_SMTP_USER", "", "its login"),
    Setting("DAILYREC_SMTP_FROM", "", "the sender"),
    Setting("DAILYREC_ALERT_TO", "", "alert recipients"),
    Setting("DAILYREC_REPORT_TO", "", "report recipients"),
)
# Written into the job as they are (names of the job's own environment).
PASSED_THROUGH = ("DAILYREC_GIT_URL", "DAILYREC_GIT_BRANCH", "DAILYREC_DVC_URL",
                  "MLFLOW_TRACKING_URI", "REDIS_URL", "REDIS_KEY_PREFIX", "DAILYREC_SMTP_HOST",
                  "DAILYREC_SMTP_PORT", "DAILYREC_SMTP_TLS", "DAILYREC_SMTP_USER",
                  "DAILYREC_SMTP_FROM", "DAILYREC_ALERT_TO", "DAILYREC_REPORT_TO")
# The job's secrets: environment variable -> Secret Manager secret (created empty by Terraform;
# the values are added with `gcloud secrets versions add`, never committed).
SECRETS = {
    "DAILYREC_SOURCE_URL": "dailyrec-source-url",
    "REDIS_PASSWORD": "dailyrec-redis-password",
    "DAILYREC_SMTP_PASSWORD": "dailyrec-smtp-password",
    "DAILYREC_GIT_TOKEN": "dailyrec-git-token",
    # A fresh container has no .state/ salt: without one fixed salt, user hashes would change daily.
    "DAILYREC_PII_SALT": "dailyrec-pii-salt",
}
# Fixed for every execution: the cloud remote, telemetry off, and the state directory on the
# instance's disk (the alert throttle and mail outbox live for one execution).
FIXED_ENV = {
    "DAILYREC_DVC_REMOTE": "gcs",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DAILYREC_STATE_DIR": "/srv/dailyrec/state",
}


@dataclass(frozen=True)
class Gpu:
    """What Cloud Run requires beside one GPU of a type, and how far it is released."""
    cpu: str
    memory: str
    launch_stage: str


# Cloud Run's minimum CPU and memory per GPU type; the RTX PRO 6000 is a preview on Cloud Run.
GPUS = {
    "nvidia-rtx-pro-6000": Gpu(cpu="20", memory="80Gi", launch_stage="BETA"),
    "nvidia-l4": Gpu(cpu="8", memory="32Gi", launch_stage="GA"),
}
# A run without a GPU (train.device: cpu): sized for the 20M-event window of docs/benchmarks.md.
CPU_ONLY = Gpu(cpu="8", memory="32Gi", launch_stage="GA")
GPU_TASK_TIMEOUT_LIMIT_MINUTES = 60
CPU_TASK_TIMEOUT_LIMIT_MINUTES = 24 * 60


def _value(env: Mapping[str, str], setting: Setting) -> str:
    raw = (env.get(setting.name) or "").strip()
    if raw:
        return raw
    if setting.default is None:
        raise ConfigError(f"{setting.name} is not set: {setting.meaning}")
    return setting.default


def _refuse_credentials(name: str, url: str) -> None:
    if url and urllib.parse.urlsplit(url).password:
        raise ConfigError(f"{name} carries a password; the job reads it from Secret Manager "
                          f"instead (see SECRETS in tools/deploy.py)")


def job_request(env: Mapping[str, str] | None = None, params=None) -> dict[str, Any]:
    """The UpdateJob request (method, URL, body) for the daily job: a Cloud Run v2 Job as the
    REST API takes it (JSON, camelCase)."""
    env = os.environ if env is None else env
    values = {s.name: _value(env, s) for s in SETTINGS}
    for name in ("DAILYREC_GIT_URL", "MLFLOW_TRACKING_URI", "REDIS_URL"):
        _refuse_credentials(name, values[name])
    project, region, job = (values["DAILYREC_GCP_PROJECT"], values["DAILYREC_GCP_REGION"],
                            values["DAILYREC_GCP_JOB"])
    device = model_settings.train(params if params is not None else settings.load()).device
    uses_gpu = device != "cpu"
    gpu_type = values["DAILYREC_GCP_GPU_TYPE"]
    if uses_gpu and gpu_type not in GPUS:
        raise ConfigError(f"DAILYREC_GCP_GPU_TYPE={gpu_type!r}: expected one of {sorted(GPUS)}")
    shape = GPUS[gpu_type] if uses_gpu else CPU_ONLY
    try:
        timeout_minutes = int(values["DAILYREC_GCP_TASK_TIMEOUT_MINUTES"])
    except ValueError:
        raise ConfigError("DAILYREC_GCP_TASK_TIMEOUT_MINUTES must be a whole number") from None
    limit = GPU_TASK_TIMEOUT_LIMIT_MINUTES if uses_gpu else CPU_TASK_TIMEOUT_LIMIT_MINUTES
    if not 1 <= timeout_minutes <= limit:
        raise ConfigError(f"DAILYREC_GCP_TASK_TIMEOUT_MINUTES={timeout_minutes}: Cloud Run allows "
                          f"1..{limit} for this job")
    account = (values["DAILYREC_GCP_JOB_SERVICE_ACCOUNT"]
               or f"dailyrec-job@{project}.iam.gserviceaccount.com")

    job_env = [{"name": name, "value": value} for name, value in FIXED_ENV.items()]
    job_env += [{"name": name, "value": values[name]} for name in PASSED_THROUGH if values[name]]
    job_env += [{"name": "DAILYREC_REQUIRE_GPU", "value": "true" if uses_gpu else "false"},
                # Cloud Run admits a caller of the MLflow service with an ID token for its URL.
                {"name": "DAILYREC_MLFLOW_AUDIENCE", "value": values["MLFLOW_TRACKING_URI"]}]
    job_env += [{"name": name, "valueSource": {"secretKeyRef": {"secret": secret,
                                                                 "version": "latest"}}}
                for name, secret in SECRETS.items()]
    limits = {"cpu": shape.cpu, "memory": shape.memory}
    task: dict[str, Any] = {
        "containers": [{"name": "daily", "image": values["DAILYREC_TRAIN_IMAGE"],
                        "env": job_env, "resources": {"limits": limits}}],
        "timeout": f"{timeout_minutes * 60}s",
        "serviceAccount": account,
        # The runner heals a failed day on the next night (catch-up); an immediate retry would
        # repeat the same failure and its alert.
        "maxRetries": 0,
        "executionEnvironment": "EXECUTION_ENVIRONMENT_GEN2",
        # All egress through the VPC: Cloud NAT gives it the one static address that the Azure
        # side (the shop's database, Redis) lets in.
        "vpcAccess": {"networkInterfaces": [{"network": values["DAILYREC_GCP_NETWORK"],
                                             "subnetwork": values["DAILYREC_GCP_SUBNET"]}],
                      "egress": "ALL_TRAFFIC"},
    }
    if uses_gpu:
        limits["nvidia.com/gpu"] = "1"
        task["nodeSelector"] = {"accelerator": gpu_type}
        # Jobs take GPUs without zonal redundancy (cheaper; a lost zone fails one night's run,
        # which the next run makes up).
        task["gpuZonalRedundancyDisabled"] = True
    name = f"projects/{project}/locations/{region}/jobs/{job}"
    body = {
        "name": name,
        "labels": {"app": "dailyrec", "train-device": device},
        "launchStage": shape.launch_stage,
        "template": {"taskCount": 1, "parallelism": 1, "template": task},
    }
    base = (env.get("DAILYREC_GCP_RUN_URL") or RUN_API).rstrip("/")
    return {"method": "PATCH", "url": f"{base}/v2/{name}?allowMissing=true", "body": body}


def send(request: Mapping[str, Any], session) -> dict:
    """Send a request built by job_request with an authorised requests-style session; the
    long-running operation Cloud Run answers with."""
    answer = session.request(request["method"], request["url"], json=request["body"], timeout=60)
    if answer.status_code >= 300:
        raise RuntimeError(f"Cloud Run answered {answer.status_code}: {answer.text[:500]}")
    return answer.json()


def azure_package(out: Path) -> list[str]:
    """Zip the Functions app: deploy/azure's files at the root, and the project's `dailyrec`
    package beside them (the function imports only its notifier, whose imports are the standard
    library's). Returns the names written."""
    names = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(AZURE_APP_DIR.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix != ".pyc":
                archive.write(path, path.name)
                names.append(path.name)
        for path in sorted((ROOT / "dailyrec").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                arcname = str(path.relative_to(ROOT))
                archive.write(path, arcname)
                names.append(arcname)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.deploy", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="target", required=True)
    gcp = sub.add_parser("gcp", help="the Cloud Run job's request: print it or send it")
    gcp.add_argument("--dry-run", action="store_true", help="print the request, send nothing")
    package = sub.add_parser("azure-package", help="zip the Azure Functions app")
    package.add_argument("--out", type=Path, required=True, help="the zip file to write")
    args = ap.parse_args(argv)

    if args.target == "azure-package":
        names = azure_package(args.out)
        print(f"wrote {args.out} ({len(names)} files)")
        return 0
    try:
        request = job_request()
    except ConfigError as err:
        print(f"deploy: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.dry_run:
        print(json.dumps(request, indent=2))
        return 0
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    try:
        operation = send(request, AuthorizedSession(credentials))
    except (RuntimeError, OSError) as err:
        print(f"deploy: error: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"{request['method']} {request['url']}: operation {operation.get('name', '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
