# Serving stays on Azure, next to the shop that calls it on every page (docs/deploy.md says why):
# the API on Container Apps, its Redis an Azure Managed Redis that publish (on GCP) writes to.

resource "azurerm_managed_redis" "serving" {
  name                      = "${var.name_prefix}-${substr(md5(var.gcp_project), 0, 8)}"
  resource_group_name       = azurerm_resource_group.main.name
  location                  = azurerm_resource_group.main.location
  sku_name                  = var.redis_sku
  high_availability_enabled = true
  # The daily job writes from Google Cloud over TLS with the access key; there is no private
  # path between the clouds to put it on.
  public_network_access = "Enabled"

  default_database {
    access_keys_authentication_enabled = true
    client_protocol                    = "Encrypted"
    clustering_policy                  = var.redis_clustering_policy
    # Versions are removed by publish (publish.keep_versions); nothing may be evicted under it.
    eviction_policy = "NoEviction"
  }
}

resource "azurerm_user_assigned_identity" "api" {
  name                = "${var.name_prefix}-api"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
}

resource "azurerm_role_assignment" "api_secrets" {
  scope                = azurerm_key_vault_secret.app["api-tokens"].resource_versionless_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.api.principal_id
}

# The serving image's registry on Azure; the API pulls with its identity, no password.
resource "azurerm_container_registry" "images" {
  name                          = replace("${var.name_prefix}${substr(md5(var.gcp_project), 0, 8)}", "-", "")
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  sku                           = "Standard"
  admin_enabled                 = false
  public_network_access_enabled = true

  #checkov:skip=CKV_AZURE_139:Pushed from a build machine and pulled by Container Apps without a virtual network; pulls need an Entra identity with AcrPull.
  #checkov:skip=CKV_AZURE_163:Image scanning is Defender for Containers, a subscription-level choice, not this module's.
  #checkov:skip=CKV_AZURE_164:Content trust needs the Premium tier; images are pulled by digest-stable tags from one team's builds.
  #checkov:skip=CKV_AZURE_165:Geo-replication needs the Premium tier; one region serves one shop.
  #checkov:skip=CKV_AZURE_166:Quarantine needs the Premium tier and a scanner (see CKV_AZURE_163).
  #checkov:skip=CKV_AZURE_167:Retention of untagged manifests needs the Premium tier; a few images a month stay small.
  #checkov:skip=CKV_AZURE_233:Zone redundancy needs the Premium tier; a registry outage delays a release, not serving.
  #checkov:skip=CKV_AZURE_237:Dedicated data endpoints need the Premium tier and matter only behind a firewall.
}

resource "azurerm_role_assignment" "api_pulls_images" {
  scope                = azurerm_container_registry.images.id
  role_definition_name = "AcrPull"
  principal_id         = azurerm_user_assigned_identity.api.principal_id
}

resource "azurerm_container_app_environment" "main" {
  name                       = var.name_prefix
  resource_group_name        = azurerm_resource_group.main.name
  location                   = azurerm_resource_group.main.location
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
}

resource "azurerm_container_app" "api" {
  name                         = "${var.name_prefix}-api"
  resource_group_name          = azurerm_resource_group.main.name
  container_app_environment_id = azurerm_container_app_environment.main.id
  revision_mode                = "Single"

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.api.id]
  }

  registry {
    server   = azurerm_container_registry.images.login_server
    identity = azurerm_user_assigned_identity.api.id
  }

  secret {
    name  = "redis-password"
    value = azurerm_managed_redis.serving.default_database[0].primary_access_key
  }

  secret {
    name                = "api-tokens"
    key_vault_secret_id = azurerm_key_vault_secret.app["api-tokens"].versionless_id
    identity            = azurerm_user_assigned_identity.api.id
  }

  ingress {
    # The shop calls it over HTTPS; every request needs a bearer token (DAILYREC_API_TOKENS).
    external_enabled = true
    target_port      = 8000
    transport        = "http"

    traffic_weight {
      latest_revision = true
      percentage      = 100
    }
  }

  template {
    min_replicas = 1
    max_replicas = 4

    container {
      name   = "api"
      image  = "${azurerm_container_registry.images.login_server}/${var.name_prefix}/serve:${var.serve_image_tag}"
      cpu    = 1
      memory = "2Gi"

      env {
        name  = "REDIS_URL"
        value = "rediss://${azurerm_managed_redis.serving.hostname}:${azurerm_managed_redis.serving.default_database[0].port}/0"
      }
      env {
        name        = "REDIS_PASSWORD"
        secret_name = "redis-password"
      }
      env {
        name        = "DAILYREC_API_TOKENS"
        secret_name = "api-tokens"
      }
      env {
        name  = "DAILYREC_API_REQUIRE_TOKENS"
        value = "true"
      }
      env {
        name  = "WEB_CONCURRENCY"
        value = "2"
      }

      liveness_probe {
        transport = "HTTP"
        port      = 8000
        path      = "/healthz"
      }

      readiness_probe {
        transport = "HTTP"
        port      = 8000
        path      = "/readyz"
      }
    }
  }
}
