# One root module for both clouds: the Azure identity, the Google federation that trusts it and
# the Function's settings that name the Google side refer to each other, and one plan resolves
# them in order (docs/deploy.md, "From an empty account pair").
terraform {
  required_version = ">= 1.9"

  # The state holds the MLflow database password and the Redis key that Terraform wires across
  # the clouds: keep it in a private, versioned bucket, never in git.
  #   terraform init -backend-config="bucket=STATE_BUCKET" -backend-config="prefix=dailyrec"
  backend "gcs" {}

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.50"
    }
    azuread = {
      source  = "hashicorp/azuread"
      version = "~> 3.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

provider "google" {
  project = var.gcp_project
  region  = var.gcp_region
}

provider "azurerm" {
  features {}
  subscription_id = var.azure_subscription_id
}

provider "azuread" {}

data "google_project" "this" {}

data "azurerm_client_config" "current" {}
