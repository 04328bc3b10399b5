# The daily job on Cloud Run with a GPU, its identity and its secrets.

resource "google_service_account" "job" {
  account_id   = "${var.name_prefix}-job"
  display_name = "dailyrec daily job"
}

resource "google_storage_bucket_iam_member" "job_dvc" {
  bucket = google_storage_bucket.dvc.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.job.email}"
}

# The job's secrets (tools/deploy.py SECRETS names the same ones). Terraform sets the values it
# makes or knows (the Redis key, the salt); the others are added by hand, never committed:
#   printf %s "$VALUE" | gcloud secrets versions add dailyrec-source-url --data-file=-
locals {
  job_secrets = ["dailyrec-source-url", "dailyrec-redis-password", "dailyrec-smtp-password",
  "dailyrec-git-token", "dailyrec-pii-salt"]
}

resource "google_secret_manager_secret" "job" {
  for_each  = toset(local.job_secrets)
  secret_id = each.value

  replication {
    user_managed {
      replicas {
        location = var.gcp_region
      }
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_iam_member" "job" {
  for_each  = google_secret_manager_secret.job
  secret_id = each.value.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.job.email}"
}

# Publish (on GCP) writes to the serving Redis (on Azure) with its key: wired here, typed by no one.
resource "google_secret_manager_secret_version" "redis_password" {
  secret      = google_secret_manager_secret.job["dailyrec-redis-password"].id
  secret_data = azurerm_managed_redis.serving.default_database[0].primary_access_key
}

# One salt for the life of the deployment: the user hashes in committed files must not change
# from one execution (a fresh disk) to the next.
resource "random_password" "pii_salt" {
  length  = 48
  special = false
}

resource "google_secret_manager_secret_version" "pii_salt" {
  secret      = google_secret_manager_secret.job["dailyrec-pii-salt"].id
  secret_data = random_password.pii_salt.result
}

# Terraform creates the job once; `python -m tools.deploy gcp` owns its template from then on
# (the image of each release, the GPU from params.yaml's train.device), hence ignore_changes.
resource "google_cloud_run_v2_job" "daily" {
  name                = "${var.name_prefix}-daily"
  location            = var.gcp_region
  launch_stage        = var.gcp_gpu_type == "nvidia-l4" ? "GA" : "BETA"
  deletion_protection = true

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account               = google_service_account.job.email
      timeout                       = "3600s"
      max_retries                   = 0
      gpu_zonal_redundancy_disabled = true

      node_selector {
        accelerator = var.gcp_gpu_type
      }

      vpc_access {
        egress = "ALL_TRAFFIC"
        network_interfaces {
          network    = google_compute_network.main.name
          subnetwork = google_compute_subnetwork.jobs.name
        }
      }

      containers {
        name  = "daily"
        image = var.train_image

        resources {
          limits = {
            cpu              = var.gcp_gpu_type == "nvidia-l4" ? "8" : "20"
            memory           = var.gcp_gpu_type == "nvidia-l4" ? "32Gi" : "80Gi"
            "nvidia.com/gpu" = "1"
          }
        }

        env {
          name  = "DAILYREC_GIT_URL"
          value = var.git_url
        }
        env {
          name  = "DAILYREC_GIT_BRANCH"
          value = var.git_branch
        }

        dynamic "env" {
          for_each = {
            DAILYREC_SOURCE_URL    = "dailyrec-source-url"
            REDIS_PASSWORD         = "dailyrec-redis-password"
            DAILYREC_SMTP_PASSWORD = "dailyrec-smtp-password"
            DAILYREC_GIT_TOKEN     = "dailyrec-git-token"
            DAILYREC_PII_SALT      = "dailyrec-pii-salt"
          }
          content {
            name = env.key
            value_source {
              secret_key_ref {
                secret  = google_secret_manager_secret.job[env.value].secret_id
                version = "latest"
              }
            }
          }
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [template, launch_stage, labels, client, client_version]
  }

  depends_on = [google_secret_manager_secret_iam_member.job, google_project_service.apis]
}
