"""`python -m tools.deploy gcp --dry-run`: the Cloud Run job request, built from params.yaml and
the environment, checked against the official client library's message types (offline: the
google-cloud-run package parses it; nothing is sent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.api.launch_stage_pb2 import LaunchStage
from google.cloud import run_v2

from tools import deploy

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "DAILYREC_GCP_PROJECT": "shop-ml",
    "DAILYREC_GCP_REGION": "europe-west4",
    "DAILYREC_TRAIN_IMAGE": "europe-west4-docker.pkg.dev/shop-ml/dailyrec/train:4f2a9c1",
    "DAILYREC_GIT_URL": "https://git.example.test/shop/dailyrec.git",
    "MLFLOW_TRACKING_URI": "https://dailyrec-mlflow-123456789.europe-west4.run.app",
    "REDIS_URL": "rediss://dailyrec-1a2b3c4d.westeurope.redis.azure.net:10000/0",
    "DAILYREC_SMTP_HOST": "smtp.example.test",
    "DAILYREC_ALERT_TO": "ml-oncall@example.test",
}


def dry_run(env: dict, params: Path | None = None) -> subprocess.CompletedProcess:
    """The command a person runs, in a clean environment holding only `env`."""
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    if params:
        full["DAILYREC_PARAMS"] = str(params)
    return subprocess.run([sys.executable, "-m", "tools.deploy", "gcp", "--dry-run"], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=60)


def env_of(job: run_v2.Job) -> dict:
    container = job.template.template.containers[0]
    return {e.name: (e.value or f"secret:{e.value_source.secret_key_ref.secret}")
            for e in container.env}


def test_dry_run_prints_an_update_job_request_cloud_run_accepts():
    proc = dry_run(ENV)
    assert proc.returncode == 0, proc.stderr
    request = json.loads(proc.stdout)
    assert request["method"] == "PATCH"
    assert request["url"] == ("https://run.googleapis.com/v2/projects/shop-ml/locations/"
                              "europe-west4/jobs/dailyrec-daily?allowMissing=true")
    # Strict parse: a field name or enum value Cloud Run does not know raises here.
    job = run_v2.Job.from_json(json.dumps(request["body"]))
    run_v2.UpdateJobRequest(job=job, allow_missing=True)
    assert job.name == "projects/shop-ml/locations/europe-west4/jobs/dailyrec-daily"

    task = job.template.template
    container = task.containers[0]
    assert container.image == ENV["DAILYREC_TRAIN_IMAGE"]
    assert not container.command and not container.args  # the image's CMD: the runner's command
    # params.yaml says train.device: auto, so the job gets a GPU and insists on using it.
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["device"] == "auto"
    assert dict(container.resources.limits) == {"cpu": "20", "memory": "80Gi",
                                                "nvidia.com/gpu": "1"}
    assert task.node_selector.accelerator == "nvidia-rtx-pro-6000"
    assert task.gpu_zonal_redundancy_disabled
    assert LaunchStage.Name(job.launch_stage) == "BETA"
    assert task.timeout.total_seconds() == 3600
    assert task.max_retries == 0
    assert task.service_account == "dailyrec-job@shop-ml.iam.gserviceaccount.com"
    assert task.vpc_access.egress == run_v2.VpcAccess.VpcEgress.ALL_TRAFFIC
    assert task.vpc_access.network_interfaces[0].subnetwork == "dailyrec-jobs"

    env = env_of(job)
    for name in ("DAILYREC_GIT_URL", "MLFLOW_TRACKING_URI", "REDIS_URL", "DAILYREC_SMTP_HOST",
                 "DAILYREC_ALERT_TO"):
        assert env[name] == ENV[name]
    assert env["DAILYREC_REQUIRE_GPU"] == "true"
    assert env["DAILYREC_MLFLOW_AUDIENCE"] == ENV["MLFLOW_TRACKING_URI"]
    assert env["DAILYREC_DVC_REMOTE"] == "gcs"
    # Every secret comes from Secret Manager; none is a plain value in the job.
    for name, secret in deploy.SECRETS.items():
        assert env[name] == f"secret:{secret}"
    assert "DAILYREC_REPORT_TO" not in env  # unset settings are left out, not sent empty


def test_a_cpu_device_in_params_yaml_drops_the_gpu(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["device"] = "cpu"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    proc = dry_run(ENV, params=path)
    assert proc.returncode == 0, proc.stderr
    job = run_v2.Job.from_json(json.dumps(json.loads(proc.stdout)["body"]))
    task = job.template.template
    assert "nvidia.com/gpu" not in task.containers[0].resources.limits
    assert not task.node_selector.accelerator
    assert env_of(job)["DAILYREC_REQUIRE_GPU"] == "false"
    assert LaunchStage.Name(job.launch_stage) == "GA"


@pytest.mark.parametrize("change, message", [
    ({"DAILYREC_TRAIN_IMAGE": ""}, "DAILYREC_TRAIN_IMAGE is not set"),
    ({"REDIS_URL": "rediss://:hunter2@shop.redis.azure.net:10000/0"},
     "REDIS_URL carries a password"),
    ({"DAILYREC_GCP_TASK_TIMEOUT_MINUTES": "90"}, "allows 1..60"),
    ({"DAILYREC_GCP_GPU_TYPE": "nvidia-t4"}, "DAILYREC_GCP_GPU_TYPE='nvidia-t4'"),
], ids=["missing-image", "password-in-url", "timeout-over-gpu-limit", "unknown-gpu"])
def test_unusable_settings_exit_2_naming_the_setting(change, message):
    proc = dry_run({**ENV, **change})
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""
    assert "hunter2" not in proc.stderr


def test_every_setting_of_the_tool_is_in_docs_deploy_md():
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for setting in deploy.SETTINGS:
        assert f"`{setting.name}`" in docs, f"{setting.name} is not in docs/deploy.md's table"
