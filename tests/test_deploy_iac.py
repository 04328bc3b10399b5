"""The infrastructure as code (deploy/terraform): checkov finds no failed check, every skipped
check says why, and the Terraform agrees with the code that uses what it makes.

checkov runs from its own virtualenv (`make checkov`: .tools/checkov, pinned by
deploy/terraform/checkov.lock), offline (--skip-download). No `terraform validate`: the providers
cannot be downloaded on this machine (no Terraform registry)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow
from tools import deploy

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "deploy" / "terraform"
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"


def checkov(directory: Path) -> dict:
    assert CHECKOV.exists(), "checkov is not installed: run `make checkov` (make test does)"
    proc = subprocess.run([str(CHECKOV), "-d", str(directory), "--framework", "terraform",
                           "--skip-download", "--compact", "-o", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: failed checks, reported below
    return json.loads(proc.stdout)


def test_checkov_fails_nothing_and_every_skip_says_why():
    report = checkov(TERRAFORM)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"], c["check_name"])
              for c in report["results"]["failed_checks"]]
    assert failed == [], "\n".join(map(str, failed))
    assert summary["parsing_errors"] == 0
    for skipped in report["results"]["skipped_checks"]:
        reason = (skipped["check_result"].get("suppress_comment") or "").strip()
        where = f"{skipped['check_id']} on {skipped['resource']}"
        assert len(reason.split()) >= 6, f"{where}: {reason!r}"
    # The files were read: resources of both clouds were checked (checkov has no checks for some
    # types, such as the Cloud Run job; parsing_errors above covers every file).
    scanned = {c["resource"].split(".")[0] for kind in ("passed_checks", "skipped_checks")
               for c in report["results"][kind]}
    assert {"google_storage_bucket", "google_sql_database_instance", "google_compute_subnetwork",
            "google_artifact_registry_repository", "azurerm_key_vault", "azurerm_storage_account",
            "azurerm_service_plan"} <= scanned


def test_checkov_catches_a_public_bucket(tmp_path):
    """The scan is live: the same files with the DVC bucket opened to the public fail it."""
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy)
    base = copy / "gcp_base.tf"
    text = base.read_text()
    assert text.count('public_access_prevention    = "enforced"') == 1
    base.write_text(text.replace('public_access_prevention    = "enforced"',
                                 'public_access_prevention    = "inherited"'))
    failed = {(c["check_id"], c["resource"]) for c in checkov(copy)["results"]["failed_checks"]}
    assert ("CKV_GCP_114", "google_storage_bucket.dvc") in failed


def tf(name: str) -> str:
    return (TERRAFORM / name).read_text()


def test_the_job_terraform_makes_is_the_one_the_deploy_tool_updates():
    job = tf("gcp_job.tf")
    secrets = re.search(r"job_secrets = \[(.*?)\]", job, re.S).group(1)
    assert set(re.findall(r'"([\w-]+)"', secrets)) == set(deploy.SECRETS.values())
    mapping = re.search(r"for_each = \{(.*?)\}", job, re.S).group(1)
    assert dict(re.findall(r'(\w+)\s*=\s*"([\w-]+)"', mapping)) == deploy.SECRETS
    variables = tf("variables.tf")

    def default_of(variable: str) -> str:
        found = re.search(rf'variable "{variable}".*?default\s*=\s*"([\w-]+)"', variables, re.S)
        return found.group(1)

    prefix = default_of("name_prefix")
    defaults = {s.name: s.default for s in deploy.SETTINGS}
    assert f"{prefix}-daily" == defaults["DAILYREC_GCP_JOB"]
    assert 'account_id   = "${var.name_prefix}-job"' in job  # the tool's default account
    assert default_of("gcp_gpu_type") == defaults["DAILYREC_GCP_GPU_TYPE"]
    assert default_of("gcp_region") == defaults["DAILYREC_GCP_REGION"]
    base = tf("gcp_base.tf")
    assert 'name                     = "${var.name_prefix}-jobs"' in base
    assert defaults["DAILYREC_GCP_SUBNET"] == f"{prefix}-jobs"
    assert defaults["DAILYREC_GCP_NETWORK"] == prefix
    assert 'timeout                       = "3600s"' in job


def test_the_function_gets_every_setting_its_code_reads():
    trigger = (ROOT / "deploy" / "azure" / "dailyrec_trigger.py").read_text()
    required = set(re.findall(r'need\("(\w+)"\)', trigger))
    app = tf("azure_trigger.tf")
    settings = set(re.findall(r"^\s{4}(\w+)\s+=", app.split("app_settings = {", 1)[1]
                              .split("\n  }", 1)[0], re.M))
    platform = {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}  # set by Azure for a managed identity
    assert required - platform <= settings, required - platform - settings
    function_app = (ROOT / "deploy" / "azure" / "function_app.py").read_text()
    for schedule in re.findall(r'schedule="%(\w+)%"', function_app):
        assert schedule in settings
