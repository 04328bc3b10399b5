# Workload identity federation: the Azure Function's managed identity starts the job with no
# Google key anywhere (deploy/azure/dailyrec_trigger.py does the exchange).

locals {
  # The audience the managed identity asks Microsoft Entra ID a token for; the pool's provider
  # accepts only tokens for it.
  entra_audience = "api://${var.name_prefix}-gcp-federation"
}

resource "google_iam_workload_identity_pool" "azure" {
  workload_identity_pool_id = "${var.name_prefix}-azure"
  display_name              = "dailyrec Azure"
  description               = "The Azure Function that schedules the daily job"
  depends_on                = [google_project_service.apis]
}

resource "google_iam_workload_identity_pool_provider" "function" {
  workload_identity_pool_id          = google_iam_workload_identity_pool.azure.workload_identity_pool_id
  workload_identity_pool_provider_id = "function"
  display_name                       = "dailyrec trigger Function"

  # Managed identities get v1 tokens: issuer sts.windows.net/TENANT/, subject = the identity's
  # object (principal) id.
  oidc {
    issuer_uri        = "https://sts.windows.net/${data.azurerm_client_config.current.tenant_id}/"
    allowed_audiences = [local.entra_audience]
  }

  attribute_mapping = {
    "google.subject" = "assertion.sub"
  }
  # Only this one identity of the tenant, whatever else asks for the same audience.
  attribute_condition = "assertion.sub == '${azurerm_user_assigned_identity.trigger.principal_id}'"
}

# The identity the Function acts as on Google Cloud: it may run the job and read its executions.
resource "google_service_account" "trigger" {
  account_id   = "${var.name_prefix}-trigger"
  display_name = "dailyrec trigger (Azure Function)"
}

resource "google_service_account_iam_member" "trigger_federation" {
  service_account_id = google_service_account.trigger.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/${google_iam_workload_identity_pool.azure.name}/subject/${azurerm_user_assigned_identity.trigger.principal_id}"
}

resource "google_cloud_run_v2_job_iam_member" "trigger_runs_job" {
  name     = google_cloud_run_v2_job.daily.name
  location = google_cloud_run_v2_job.daily.location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.trigger.email}"
}

# Listing a job's executions is checked at the project: read-only Cloud Run access.
resource "google_project_iam_member" "trigger_reads_executions" {
  project = var.gcp_project
  role    = "roles/run.viewer"
  member  = "serviceAccount:${google_service_account.trigger.email}"
}
