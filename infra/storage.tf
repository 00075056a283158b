# Results over the inline limit (64 KiB) go to this bucket (RUNQ_RESULTS_BUCKET).

resource "google_storage_bucket" "results" {
  # checkov:skip=CKV_GCP_62: Access logging of a results bucket would log every read of every large result; Cloud Audit Logs (data access) cover this when an organisation wants it.
  # checkov:skip=CKV_GCP_78: Not versioned on purpose: a result is written once under a name fenced by its claim and deleted when it expires; old versions would only keep expired data alive.
  name                        = local.results_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  lifecycle_rule {
    condition {
      age = var.results_retention_days
    }
    action {
      type = "Delete"
    }
  }
}

# Workers write results; the API's cleanup schedule deletes expired ones.
resource "google_storage_bucket_iam_member" "results" {
  for_each = toset(["api", "worker"])
  bucket   = google_storage_bucket.results.name
  role     = "roles/storage.objectUser"
  member   = "serviceAccount:${google_service_account.runq[each.key].email}"
}

# Staging for `gcloud builds submit --gcs-source-staging-dir`: the deploy account reads its
# sources here instead of a project-wide grant.
resource "google_storage_bucket" "build_sources" {
  # checkov:skip=CKV_GCP_62: Source tarballs of builds; their uploads are in Cloud Audit Logs.
  # checkov:skip=CKV_GCP_78: Each upload has a unique name and is deleted after a week: versions would add nothing.
  name                        = "${var.project_id}-runq-build"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "Delete"
    }
  }
}
