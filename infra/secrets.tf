# Secret Manager: the database URLs and the JWT signing secrets. Cloud Run reads them at each
# instance start (`latest`), so rotating one is: add a version, roll a new revision
# (docs/deploy.md, "Rotating the JWT secret").

locals {
  secrets = {
    # The services' database URL (runq_app).
    "database-url" = local.database_url
    # The migration job's database URL (runq_owner, which owns the schema).
    "database-url-migrate" = local.migrate_url
    # HS256 secret of user tokens (`runq token` signs with it).
    "auth-hs256-secret" = random_password.hs256.result
    # Still accepted during a rotation. Outside one it holds the current secret again.
    "auth-hs256-previous-secret" = random_password.hs256.result
  }
}

resource "random_password" "hs256" {
  length  = 64
  special = false
}

resource "google_secret_manager_secret" "runq" {
  # checkov:skip=CKV_GCP_128: Google-managed encryption keys; a customer-managed key is an organisation policy choice outside runq (see CKV_GCP_84 in registry.tf).
  for_each  = local.secrets
  secret_id = "runq-${each.key}"

  replication {
    user_managed {
      replicas {
        location = var.region
      }
    }
  }
}

resource "google_secret_manager_secret_version" "runq" {
  for_each    = local.secrets
  secret      = google_secret_manager_secret.runq[each.key].id
  secret_data = each.value

  # Rotations add versions with gcloud; Terraform only writes the first one.
  lifecycle {
    ignore_changes = [secret_data]
  }
}
