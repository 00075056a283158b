# runq on Google Cloud: what every other file shares.
#
# runq.json is the contract with the code (`runq infra export > infra/runq.json` writes it, and
# a test compares the two): the queues (topic, push subscription and worker service of each) and
# the schedules are generated from it with for_each, never written out here a second time.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  runq      = jsondecode(file("${path.module}/runq.json"))
  queues    = { for q in local.runq.queues : q.name => q }
  schedules = { for s in local.runq.schedules : s.name => s }

  project_number = data.google_project.this.number

  # Cloud Run's deterministic URLs (https://SERVICE-PROJECT_NUMBER.REGION.run.app), known before
  # the services exist, so a worker can be told its own URL (the audience of its push tokens).
  api_service = "runq-api"
  api_url     = "https://${local.api_service}-${local.project_number}.${var.region}.run.app"
  worker_urls = { for name, q in local.queues : name => "https://${q.service}-${local.project_number}.${var.region}.run.app" }

  # Each internal caller gets its own audience and its own service account (docs/deploy.md).
  dead_letter_audience = "${local.api_url}/internal/dead-letter"
  scheduler_audience   = "${local.api_url}/internal/schedules"

  pubsub_agent   = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  results_bucket = "${var.project_id}-runq-results"

  # One service account per role; see iam.tf for what each may do.
  accounts = {
    api         = "runq-api"
    worker      = "runq-worker"
    push        = "runq-push"
    scheduler   = "runq-scheduler"
    dead_letter = "runq-dead-letter"
    migrate     = "runq-migrate"
    deploy      = "runq-deploy"
  }

  # Environment of the deployed roles (cloudbuild.yaml sets the same; a test compares them).
  common_env = {
    GOOGLE_CLOUD_PROJECT    = var.project_id
    RUNQ_AUTO_MIGRATE       = "false"
    RUNQ_LOG_FORMAT         = "json"
    RUNQ_DB_MAX_CONNECTIONS = tostring(var.db_max_connections)
  }
  api_env = merge(
    local.common_env,
    {
      RUNQ_PUBSUB_PROJECT               = var.project_id
      RUNQ_TOPIC_PREFIX                 = local.runq.topic_prefix
      RUNQ_DEAD_LETTER_AUDIENCE         = local.dead_letter_audience
      RUNQ_DEAD_LETTER_SERVICE_ACCOUNTS = google_service_account.runq["dead_letter"].email
      RUNQ_SCHEDULER_AUDIENCE           = local.scheduler_audience
      RUNQ_SCHEDULER_SERVICE_ACCOUNTS   = google_service_account.runq["scheduler"].email
      RUNQ_RESULTS_BUCKET               = local.results_bucket
    },
    var.cors_origins == "" ? {} : { RUNQ_CORS_ORIGINS = var.cors_origins },
    var.auth_jwks_url == "" ? {} : {
      RUNQ_AUTH_JWKS_URL = var.auth_jwks_url
      RUNQ_AUTH_ISSUER   = var.auth_issuer
      RUNQ_AUTH_AUDIENCE = var.auth_audience
    },
  )
  worker_env = {
    for name, q in local.queues : name => merge(local.common_env, {
      RUNQ_PUSH_AUDIENCE         = local.worker_urls[name]
      RUNQ_PUSH_SERVICE_ACCOUNTS = google_service_account.runq["push"].email
      RUNQ_RESULTS_BUCKET        = local.results_bucket
      # Workers publish what a run releases (a held job's slot) and the children it spawns.
      RUNQ_PUBSUB_PROJECT = var.project_id
      RUNQ_TOPIC_PREFIX   = local.runq.topic_prefix
      # Cloud Run Job functions run in executions of this job (run.tf).
      RUNQ_EXEC_JOB = "projects/${var.project_id}/locations/${var.region}/jobs/${local.exec_job}"
    })
  }
  # `runq exec` (one run of a Cloud Run Job function) does what a worker's run does.
  exec_job = "runq-exec"
  exec_env = merge(local.common_env, {
    RUNQ_RESULTS_BUCKET = local.results_bucket
  })

  # Secret Manager secrets each role reads, by environment variable (secrets.tf).
  api_secrets = {
    DATABASE_URL                    = google_secret_manager_secret.runq["database-url"].secret_id
    RUNQ_AUTH_HS256_SECRET          = google_secret_manager_secret.runq["auth-hs256-secret"].secret_id
    RUNQ_AUTH_HS256_PREVIOUS_SECRET = google_secret_manager_secret.runq["auth-hs256-previous-secret"].secret_id
  }
  worker_secrets = {
    DATABASE_URL = google_secret_manager_secret.runq["database-url"].secret_id
  }
  migrate_secrets = {
    DATABASE_URL = google_secret_manager_secret.runq["database-url-migrate"].secret_id
  }

  services = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "runq" {
  for_each           = toset(local.services)
  service            = each.value
  disable_on_destroy = false
}
