# One service account per role, each with only what that role does:
#
# | account          | is                                  | may                                              |
# |------------------|-------------------------------------|--------------------------------------------------|
# | runq-api         | the API service                     | publish to the queue topics, read its secrets, Cloud SQL client, results bucket |
# | runq-worker      | the worker services                 | read the database URL, Cloud SQL client, results bucket |
# | runq-push        | Pub/Sub push tokens to the workers  | invoke the worker services                       |
# | runq-dead-letter | the dead-letter push to the API     | nothing (the API checks its token itself)        |
# | runq-scheduler   | Cloud Scheduler's calls to the API  | nothing (the API checks its token itself)        |
# | runq-migrate     | the migration job                   | read the owner's database URL, Cloud SQL client  |
# | runq-deploy      | Cloud Build (cloudbuild.yaml)       | read its sources, push images, deploy the services and the job |

resource "google_service_account" "runq" {
  for_each     = local.accounts
  account_id   = each.value
  display_name = "runq ${replace(each.key, "_", " ")}"
}

# Cloud SQL connector: roles/cloudsql.client has no narrower scope than the project.
resource "google_project_iam_member" "sql_client" {
  for_each = toset(["api", "worker", "migrate"])
  project  = var.project_id
  role     = "roles/cloudsql.client"
  member   = "serviceAccount:${google_service_account.runq[each.key].email}"
}

# Secrets, each to the roles that read it.
locals {
  secret_readers = {
    "database-url/api"               = { secret = "database-url", role = "api" }
    "database-url/worker"            = { secret = "database-url", role = "worker" }
    "database-url-migrate/migrate"   = { secret = "database-url-migrate", role = "migrate" }
    "auth-hs256-secret/api"          = { secret = "auth-hs256-secret", role = "api" }
    "auth-hs256-previous-secret/api" = { secret = "auth-hs256-previous-secret", role = "api" }
  }
}

resource "google_secret_manager_secret_iam_member" "reader" {
  for_each  = local.secret_readers
  secret_id = google_secret_manager_secret.runq[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runq[each.value.role].email}"
}

# The API publishes jobs (and the sweep republishes them); workers publish the jobs a run's
# end releases from a limit and the children a run spawns. Nobody else publishes.
resource "google_pubsub_topic_iam_member" "api_publishes" {
  for_each = local.queues
  topic    = google_pubsub_topic.queue[each.key].id
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.runq["api"].email}"
}

resource "google_pubsub_topic_iam_member" "worker_publishes" {
  for_each = local.queues
  topic    = google_pubsub_topic.queue[each.key].id
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.runq["worker"].email}"
}

# Pub/Sub signs push tokens as the push and dead-letter accounts: its service agent needs to
# mint their tokens (only on these two accounts).
resource "google_service_account_iam_member" "pubsub_signs" {
  for_each           = toset(["push", "dead_letter"])
  service_account_id = google_service_account.runq[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Cloud Build deploys as runq-deploy.
resource "google_project_iam_member" "deploy" {
  for_each = toset([
    # Deploy services, update and execute the migration job. run.developer would do, but for
    # `--no-allow-unauthenticated` on the workers, which re-asserts their invoker policy.
    "roles/run.admin",
    "roles/logging.logWriter", # build logs
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.runq["deploy"].email}"
}

resource "google_artifact_registry_repository_iam_member" "deploy_pushes" {
  location   = google_artifact_registry_repository.runq.location
  repository = google_artifact_registry_repository.runq.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.runq["deploy"].email}"
}

# Deploying a service that runs as an account needs actAs on that account, and only those.
resource "google_service_account_iam_member" "deploy_acts_as" {
  for_each           = toset(["api", "worker", "migrate"])
  service_account_id = google_service_account.runq[each.key].name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.runq["deploy"].email}"
}

# The sources `gcloud builds submit` uploads (docs/deploy.md), readable by Cloud Build's account.
resource "google_storage_bucket_iam_member" "deploy_reads_sources" {
  bucket = google_storage_bucket.build_sources.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.runq["deploy"].email}"
}
