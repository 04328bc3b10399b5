variable "gcp_project" {
  description = "Google Cloud project id of the training side."
  type        = string
}

variable "gcp_region" {
  description = "Region of the job, its bucket and MLflow; one with Cloud Run GPUs of gcp_gpu_type."
  type        = string
  default     = "europe-west4"
}

variable "gcp_gpu_type" {
  description = "Cloud Run GPU: nvidia-rtx-pro-6000 (driver 580, runs CUDA 13) or nvidia-l4 (docs/deploy.md)."
  type        = string
  default     = "nvidia-rtx-pro-6000"
}

variable "azure_subscription_id" {
  description = "Azure subscription of the scheduling and serving side."
  type        = string
}

variable "azure_location" {
  description = "Azure region, next to the shop."
  type        = string
  default     = "westeurope"
}

variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "dailyrec"
}

variable "dvc_bucket_name" {
  description = "GCS bucket of the gcs DVC remote (names are global: the committed one is dailyrec-dvc)."
  type        = string
}

variable "train_image" {
  description = "The training image, pushed to the Artifact Registry repository this module makes."
  type        = string
}

variable "serve_image_tag" {
  description = "Tag of the serving image, pushed as dailyrec/serve:TAG to both registries this module makes (Container Apps pulls from Azure's, Cloud Run, for MLflow, from Google's)."
  type        = string
}

variable "git_url" {
  description = "The project's git repository, https, no credentials (the token is the dailyrec-git-token secret)."
  type        = string
}

variable "git_branch" {
  description = "The branch the job checks out and commits each day to."
  type        = string
  default     = "main"
}

variable "start_schedule" {
  description = "When the Function starts the job (NCRONTAB, six fields, UTC)."
  type        = string
  default     = "0 15 2 * * *"
}

variable "deadline_schedule" {
  description = "When the Function checks that the run finished (NCRONTAB, UTC)."
  type        = string
  default     = "0 15 4 * * *"
}

variable "smtp" {
  description = "Mail settings for alerts and the report (the password is a secret, set apart)."
  type = object({
    host      = string
    port      = string
    tls       = string
    user      = string
    from      = string
    alert_to  = string
    report_to = string
  })
}

variable "redis_sku" {
  description = "Azure Managed Redis size: 3 versions of 1M users take about 1.5 GB (docs/benchmarks.md)."
  type        = string
  default     = "Balanced_B3"
}

variable "redis_clustering_policy" {
  description = "NoCluster: publish switches versions with multi-key Lua scripts, which a sharded database refuses (CROSSSLOT)."
  type        = string
  default     = "NoCluster"
}
