# Artifact Registry: the one runq image, tagged with the commit (cloudbuild.yaml).

resource "google_artifact_registry_repository" "runq" {
  # checkov:skip=CKV_GCP_84: Google-managed encryption. A customer-managed key adds a Cloud KMS key ring and per-service agent grants that are an organisation's policy choice, not runq's; the image holds no secrets.
  location      = var.region
  repository_id = var.repository
  format        = "DOCKER"
  description   = "runq images (one image, every role)"

  docker_config {
    immutable_tags = true
  }

  # Keep the last releases for rollbacks; drop the rest.
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 30
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "7776000s" # 90 days
    }
  }
}
