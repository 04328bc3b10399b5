# Azure: the Function that schedules the day (deploy/azure), its identity and its settings.

resource "azurerm_resource_group" "main" {
  name     = var.name_prefix
  location = var.azure_location
}

# The Function's identity: it reads its own storage and its secret, and it is the subject the
# Google pool's provider trusts (gcp_federation.tf).
resource "azurerm_user_assigned_identity" "trigger" {
  name                = "${var.name_prefix}-trigger"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
}

# An application whose ID URI is the audience of the tokens the identity presents to Google.
resource "azuread_application" "federation" {
  display_name     = "${var.name_prefix} GCP federation"
  identifier_uris  = [local.entra_audience]
  sign_in_audience = "AzureADMyOrg"
}

resource "azuread_service_principal" "federation" {
  client_id = azuread_application.federation.client_id
}

resource "azurerm_log_analytics_workspace" "main" {
  name                = var.name_prefix
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  sku                 = "PerGB2018"
  retention_in_days   = 30
}

resource "azurerm_application_insights" "trigger" {
  name                = "${var.name_prefix}-trigger"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  workspace_id        = azurerm_log_analytics_workspace.main.id
  application_type    = "other"
}

# The Function's own storage (its package and timer leases), reached by identity, not by key.
resource "azurerm_storage_account" "functions" {
  name                              = replace("${var.name_prefix}fn${substr(md5(var.gcp_project), 0, 8)}", "-", "")
  resource_group_name               = azurerm_resource_group.main.name
  location                          = azurerm_resource_group.main.location
  account_tier                      = "Standard"
  account_replication_type          = "ZRS"
  min_tls_version                   = "TLS1_2"
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  infrastructure_encryption_enabled = true

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  sas_policy {
    expiration_period = "01.00:00:00"
  }

  #checkov:skip=CKV_AZURE_206:Zone-redundant (ZRS) is enough for a code package and timer leases that a redeploy restores.
  #checkov:skip=CKV_AZURE_59:Flex Consumption without virtual network integration reaches its storage over the public endpoint; access needs the Function's identity (shared keys are off).
  #checkov:skip=CKV_AZURE_33:No queues are used (timer triggers keep leases in blobs).
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys: the account holds the Function's code package and timer leases, no data.
  #checkov:skip=CKV2_AZURE_33:A private endpoint needs the Function in a virtual network; see CKV_AZURE_59.
}

resource "azurerm_storage_container" "deployments" {
  name                  = "deployments"
  storage_account_id    = azurerm_storage_account.functions.id
  container_access_type = "private"
  #checkov:skip=CKV2_AZURE_21:Blob read logging of a container that holds one code package adds cost, not insight.
}

resource "azurerm_role_assignment" "trigger_storage" {
  scope                = azurerm_storage_account.functions.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = azurerm_user_assigned_identity.trigger.principal_id
}

resource "azurerm_key_vault" "main" {
  name                       = "${var.name_prefix}-${substr(md5(var.gcp_project), 0, 8)}"
  resource_group_name        = azurerm_resource_group.main.name
  location                   = azurerm_resource_group.main.location
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  rbac_authorization_enabled = true
  purge_protection_enabled   = true
  soft_delete_retention_days = 30

  # Key Vault references of a Function and a Container App without a virtual network come over
  # the public endpoint; every read needs an Entra identity with the Secrets User role on the one
  # secret it reads (below).
  public_network_access_enabled = true

  network_acls {
    bypass         = "AzureServices"
    default_action = "Allow"
  }

  #checkov:skip=CKV_AZURE_109:See public_network_access_enabled: reads need an identity and a role on the secret.
  #checkov:skip=CKV_AZURE_189:Same reason: no virtual network on either reader.
  #checkov:skip=CKV2_AZURE_32:A private endpoint needs the Function and the API in a virtual network; same reason.
}

# Values are set by hand (`az keyvault secret set`), never by Terraform or git: each secret is
# created here with a placeholder that the apply never overwrites again.
resource "azurerm_key_vault_secret" "app" {
  for_each        = toset(["smtp-password", "api-tokens"])
  name            = each.value
  value           = "set-me"
  key_vault_id    = azurerm_key_vault.main.id
  content_type    = "text/plain"
  expiration_date = "2030-01-01T00:00:00Z"

  lifecycle {
    ignore_changes = [value]
  }
}


resource "azurerm_service_plan" "functions" {
  name                = "${var.name_prefix}-functions"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  os_type             = "Linux"
  sku_name            = "FC1"
  #checkov:skip=CKV_AZURE_212:Two timer runs a day: one instance at a time is the design, not a risk.
  #checkov:skip=CKV_AZURE_225:Zone redundancy for two timer runs a day; a missed start is caught by the deadline check and made up by the next run.
}

resource "azurerm_function_app_flex_consumption" "trigger" {
  name                = "${var.name_prefix}-trigger-${substr(md5(var.gcp_project), 0, 8)}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  service_plan_id     = azurerm_service_plan.functions.id

  storage_container_type            = "blobContainer"
  storage_container_endpoint        = "${azurerm_storage_account.functions.primary_blob_endpoint}${azurerm_storage_container.deployments.name}"
  storage_authentication_type       = "UserAssignedIdentity"
  storage_user_assigned_identity_id = azurerm_user_assigned_identity.trigger.id
  runtime_name                      = "python"
  runtime_version                   = "3.11"
  maximum_instance_count            = 40
  instance_memory_in_mb             = 2048

  # The user-assigned identity is the one Google trusts and the one that reads the storage; the
  # system-assigned one resolves the Key Vault reference below (App Service's default for it).
  identity {
    type         = "SystemAssigned, UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.trigger.id]
  }

  site_config {
    application_insights_connection_string = azurerm_application_insights.trigger.connection_string
  }

  # deploy/azure/dailyrec_trigger.py and docs/deploy.md name each of these.
  app_settings = {
    AzureWebJobsStorage__accountName     = azurerm_storage_account.functions.name
    AzureWebJobsStorage__credential      = "managedidentity"
    AzureWebJobsStorage__clientId        = azurerm_user_assigned_identity.trigger.client_id
    DAILYREC_START_SCHEDULE              = var.start_schedule
    DAILYREC_DEADLINE_SCHEDULE           = var.deadline_schedule
    DAILYREC_GCP_PROJECT                 = var.gcp_project
    DAILYREC_GCP_REGION                  = var.gcp_region
    DAILYREC_GCP_JOB                     = google_cloud_run_v2_job.daily.name
    DAILYREC_GCP_WIF_AUDIENCE            = "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.function.name}"
    DAILYREC_GCP_TRIGGER_SERVICE_ACCOUNT = google_service_account.trigger.email
    DAILYREC_AZURE_TOKEN_AUDIENCE        = local.entra_audience
    DAILYREC_AZURE_CLIENT_ID             = azurerm_user_assigned_identity.trigger.client_id
    DAILYREC_SMTP_HOST                   = var.smtp.host
    DAILYREC_SMTP_PORT                   = var.smtp.port
    DAILYREC_SMTP_TLS                    = var.smtp.tls
    DAILYREC_SMTP_USER                   = var.smtp.user
    DAILYREC_SMTP_FROM                   = var.smtp.from
    DAILYREC_SMTP_PASSWORD               = "@Microsoft.KeyVault(SecretUri=${azurerm_key_vault_secret.app["smtp-password"].versionless_id})"
    DAILYREC_ALERT_TO                    = var.smtp.alert_to
    DAILYREC_STATE_DIR                   = "/tmp/dailyrec"
  }
}

resource "azurerm_role_assignment" "trigger_secrets" {
  scope                = azurerm_key_vault_secret.app["smtp-password"].resource_versionless_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_function_app_flex_consumption.trigger.identity[0].principal_id
}
