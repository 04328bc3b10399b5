# Google Cloud: the APIs, the network the job leaves through, the image repository, the DVC bucket.

locals {
  gcp_apis = ["run.googleapis.com", "secretmanager.googleapis.com", "iam.googleapis.com",
    "iamcredentials.googleapis.com", "sts.googleapis.com", "sqladmin.googleapis.com",
    "artifactregistry.googleapis.com", "compute.googleapis.com", "servicenetworking.googleapis.com"]
}

resource "google_project_service" "apis" {
  for_each           = toset(local.gcp_apis)
  service            = each.value
  disable_on_destroy = false
}

resource "google_artifact_registry_repository" "images" {
  repository_id = var.name_prefix
  location      = var.gcp_region
  format        = "DOCKER"
  description   = "dailyrec images: train, and serve for the MLflow server"
  depends_on    = [google_project_service.apis]

  #checkov:skip=CKV_GCP_84:Google-managed encryption: the images hold the project's open code and public packages, no data or secret.
}

# All the job's traffic leaves through Cloud NAT with one reserved address: the Azure side (the
# shop's database firewall) admits that address only.
resource "google_compute_network" "main" {
  name                    = var.name_prefix
  auto_create_subnetworks = false
  depends_on              = [google_project_service.apis]
}

# Nothing listens in this network: the job and MLflow only call out. Deny every inbound packet
# explicitly rather than rely on the implied rule.
resource "google_compute_firewall" "deny_ingress" {
  name      = "${var.name_prefix}-deny-ingress"
  network   = google_compute_network.main.id
  direction = "INGRESS"
  priority  = 65534

  deny {
    protocol = "all"
  }

  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_subnetwork" "jobs" {
  name                     = "${var.name_prefix}-jobs"
  network                  = google_compute_network.main.id
  region                   = var.gcp_region
  ip_cidr_range            = "10.8.0.0/24"
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_address" "egress" {
  name   = "${var.name_prefix}-egress"
  region = var.gcp_region
}

resource "google_compute_router" "main" {
  name    = var.name_prefix
  network = google_compute_network.main.id
  region  = var.gcp_region
}

resource "google_compute_router_nat" "main" {
  name                               = var.name_prefix
  router                             = google_compute_router.main.name
  region                             = var.gcp_region
  nat_ip_allocate_option             = "MANUAL_ONLY"
  nat_ips                            = [google_compute_address.egress.self_link]
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = google_compute_subnetwork.jobs.id
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# The gcs DVC remote: the year of history and every day's model (docs/reproducibility.md).
resource "google_storage_bucket" "dvc" {
  name                        = var.dvc_bucket_name
  location                    = var.gcp_region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # DVC's cache is content-addressed and never rewrites an object; versions guard against a
  # mistaken `dvc gc -c` or deletion.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      num_newer_versions         = 1
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  #checkov:skip=CKV_GCP_62:Access logs of a bucket that one service account reads and writes add cost, not insight; Cloud Audit Logs record its data access.
}
