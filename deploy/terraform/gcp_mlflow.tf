# MLflow tracking server: the serving image running `mlflow server` on Cloud Run, runs in Cloud
# SQL (PostgreSQL, private address), artifacts in GCS through the server. It scales to zero
# between daily runs; its state is in the database and the bucket, none on the instance.

resource "google_service_account" "mlflow" {
  account_id   = "${var.name_prefix}-mlflow"
  display_name = "dailyrec MLflow server"
}

resource "google_storage_bucket" "mlflow" {
  name                        = "${var.dvc_bucket_name}-mlflow"
  location                    = var.gcp_region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  #checkov:skip=CKV_GCP_62:Only the MLflow server's account touches it; Cloud Audit Logs record data access.
}

resource "google_storage_bucket_iam_member" "mlflow_artifacts" {
  bucket = google_storage_bucket.mlflow.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.mlflow.email}"
}

# Private services access: Cloud SQL on a private address in the job's network.
resource "google_compute_global_address" "sql" {
  name          = "${var.name_prefix}-sql"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = 20
  network       = google_compute_network.main.id
}

resource "google_service_networking_connection" "sql" {
  network                 = google_compute_network.main.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.sql.name]
}

resource "google_sql_database_instance" "mlflow" {
  name                = "${var.name_prefix}-mlflow"
  region              = var.gcp_region
  database_version    = "POSTGRES_18"
  deletion_protection = true

  settings {
    tier              = "db-f1-micro"
    edition           = "ENTERPRISE"
    availability_type = "ZONAL"

    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.main.id
      ssl_mode        = "ENCRYPTED_ONLY"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
    }

    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_duration"
      value = "on"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
  }

  depends_on = [google_service_networking_connection.sql]

  #checkov:skip=CKV_GCP_6:TLS is required (ssl_mode ENCRYPTED_ONLY); client certificates would need the Cloud SQL connector in the image, and the instance has no public address.
}

resource "google_sql_database" "mlflow" {
  name     = "mlflow"
  instance = google_sql_database_instance.mlflow.name
}

resource "random_password" "mlflow_db" {
  length  = 32
  special = false
}

resource "google_sql_user" "mlflow" {
  name     = "mlflow"
  instance = google_sql_database_instance.mlflow.name
  password = random_password.mlflow_db.result
}

resource "google_secret_manager_secret" "mlflow_db" {
  secret_id = "${var.name_prefix}-mlflow-db-uri"

  replication {
    user_managed {
      replicas {
        location = var.gcp_region
      }
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "mlflow_db" {
  secret      = google_secret_manager_secret.mlflow_db.id
  secret_data = "postgresql+psycopg://mlflow:${random_password.mlflow_db.result}@${google_sql_database_instance.mlflow.private_ip_address}:5432/mlflow?sslmode=require"
}

resource "google_secret_manager_secret_iam_member" "mlflow_db" {
  secret_id = google_secret_manager_secret.mlflow_db.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.mlflow.email}"
}

resource "google_cloud_run_v2_service" "mlflow" {
  name                = "${var.name_prefix}-mlflow"
  location            = var.gcp_region
  deletion_protection = false
  # Reachable by URL, but only with an ID token of an account that holds run.invoker (below):
  # the job's, and the people who open the UI through `gcloud run services proxy`.
  ingress = "INGRESS_TRAFFIC_ALL"

  template {
    service_account = google_service_account.mlflow.email

    scaling {
      min_instance_count = 0
      max_instance_count = 1
    }

    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = google_compute_network.main.name
        subnetwork = google_compute_subnetwork.jobs.name
      }
    }

    containers {
      image   = "${var.gcp_region}-docker.pkg.dev/${var.gcp_project}/${google_artifact_registry_repository.images.repository_id}/serve:${var.serve_image_tag}"
      command = ["sh", "-c"]
      args = [join(" ", [
        "exec mlflow server --host 0.0.0.0 --port 8080 --workers 2",
        "--backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\"",
        "--artifacts-destination gs://${google_storage_bucket.mlflow.name}/artifacts",
        "--serve-artifacts",
        "--allowed-hosts '${var.name_prefix}-mlflow-*.run.app,localhost:*,127.0.0.1:*'",
      ])]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "2Gi"
        }
      }

      env {
        name  = "MLFLOW_DISABLE_TELEMETRY"
        value = "true"
      }
      env {
        name = "MLFLOW_BACKEND_STORE_URI"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.mlflow_db.secret_id
            version = "latest"
          }
        }
      }

      startup_probe {
        http_get {
          path = "/health"
        }
        period_seconds    = 5
        failure_threshold = 24
      }
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.mlflow_db]
}

resource "google_cloud_run_v2_service_iam_member" "job_uses_mlflow" {
  name     = google_cloud_run_v2_service.mlflow.name
  location = google_cloud_run_v2_service.mlflow.location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.job.email}"
}
