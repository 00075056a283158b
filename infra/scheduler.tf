# Cloud Scheduler (celery-beat's replacement): one job per schedule in runq.json, calling the
# API's POST /internal/schedules/{name} with an OIDC token of runq-scheduler. The API submits
# with an idempotency key per firing, so Scheduler's retries never run a firing twice. Job ids
# can't contain dots: runq.sweep becomes runq-sweep.

resource "google_cloud_scheduler_job" "schedule" {
  for_each         = local.schedules
  name             = replace(each.key, ".", "-")
  description      = "runq schedule ${each.key}"
  region           = var.region
  schedule         = each.value.cron
  time_zone        = each.value.time_zone
  attempt_deadline = "300s"

  retry_config {
    retry_count          = 3
    min_backoff_duration = "5s"
    max_backoff_duration = "60s"
  }

  http_target {
    http_method = "POST"
    uri         = "${local.api_url}${each.value.path}"

    oidc_token {
      service_account_email = google_service_account.runq["scheduler"].email
      audience              = local.scheduler_audience
    }
  }
}
