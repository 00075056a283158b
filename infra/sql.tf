# Cloud SQL for PostgreSQL, reached through the Cloud SQL connector that Cloud Run runs beside
# each instance (the `cloudsql` volume: a Unix socket under /cloudsql/CONNECTION_NAME). The
# connector authorises with the service account's roles/cloudsql.client and encrypts with TLS,
# so runq's driver (built without TLS) never speaks to the network itself.

resource "google_sql_database_instance" "runq" {
  # checkov:skip=CKV2_GCP_13: log_duration logs a line per statement, thousands a second at runq's job rates; slow statements show in Query Insights instead.
  # checkov:skip=CKV_GCP_60: The public IP has no authorised networks, so only the Cloud SQL connector (IAM-authorised, TLS) reaches it; a private IP would need a VPC, Direct VPC egress on every service and TLS in runq's driver, which it does not build with.
  name                = var.sql_instance_name
  region              = var.region
  database_version    = var.sql_database_version
  deletion_protection = var.sql_deletion_protection

  settings {
    tier              = var.sql_tier
    edition           = "ENTERPRISE"
    availability_type = var.sql_availability_type
    disk_type         = "PD_SSD"
    disk_size         = var.sql_disk_size_gb
    disk_autoresize   = true

    ip_configuration {
      ipv4_enabled = true
      # No authorized_networks: the connector is the only way in.
      # The connector presents its own client certificate, so the strictest mode costs nothing.
      ssl_mode = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "02:00"
      transaction_log_retention_days = 7
      backup_retention_settings {
        retained_backups = 14
      }
    }

    maintenance_window {
      day          = 7
      hour         = 3
      update_track = "stable"
    }

    insights_config {
      query_insights_enabled  = true
      record_application_tags = false
      record_client_address   = false
    }

    # Logging that audits expect; log_min_duration_statement stays off (-1) because runq's
    # statements carry job arguments, which are never logged.
    # Every instance holds up to RUNQ_DB_MAX_CONNECTIONS + 2: (api_max_instances + the queues'
    # max_instances) x (db_max_connections + 2) = (10 + 35) x 10 with the defaults.
    database_flags {
      name  = "max_connections"
      value = "500"
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
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_min_messages"
      value = "warning"
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
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
  }
}

resource "google_sql_database" "runq" {
  name     = "runq"
  instance = google_sql_database_instance.runq.name
}

# Two database users: the owner, which only the migration job uses, and the services' user, which
# can read and write rows but not change the schema (the grants are in docs/deploy.md, step 4).
resource "random_password" "db" {
  for_each = toset(["owner", "app"])
  length   = 40
  special  = false
}

resource "google_sql_user" "owner" {
  name     = "runq_owner"
  instance = google_sql_database_instance.runq.name
  password = random_password.db["owner"].result
}

resource "google_sql_user" "app" {
  name     = "runq_app"
  instance = google_sql_database_instance.runq.name
  password = random_password.db["app"].result
}

locals {
  sql_socket   = "/cloudsql/${google_sql_database_instance.runq.connection_name}"
  database_url = "postgres://${google_sql_user.app.name}:${random_password.db["app"].result}@localhost/${google_sql_database.runq.name}?host=${local.sql_socket}"
  migrate_url  = "postgres://${google_sql_user.owner.name}:${random_password.db["owner"].result}@localhost/${google_sql_database.runq.name}?host=${local.sql_socket}"
}
