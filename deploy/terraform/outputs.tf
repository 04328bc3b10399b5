output "egress_ip" {
  description = "The job's one outbound address: admit it on the shop database's firewall."
  value       = google_compute_address.egress.address
}

output "image_repository" {
  description = "Where to push the training image, and the serving image for MLflow."
  value       = "${var.gcp_region}-docker.pkg.dev/${var.gcp_project}/${google_artifact_registry_repository.images.repository_id}"
}

output "job_name" {
  value = google_cloud_run_v2_job.daily.name
}

output "mlflow_url" {
  description = "MLFLOW_TRACKING_URI of the job; people open it with `gcloud run services proxy`."
  value       = google_cloud_run_v2_service.mlflow.uri
}

output "redis_url" {
  description = "REDIS_URL of the job and the API (the key is wired into both; it is not printed)."
  value       = "rediss://${azurerm_managed_redis.serving.hostname}:${azurerm_managed_redis.serving.default_database[0].port}/0"
}

output "api_url" {
  value = "https://${azurerm_container_app.api.ingress[0].fqdn}"
}

output "function_app_name" {
  value = azurerm_function_app_flex_consumption.trigger.name
}

output "azure_registry" {
  description = "Where to push the serving image for the API."
  value       = azurerm_container_registry.images.login_server
}
