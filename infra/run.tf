# Cloud Run: the API, one worker service per queue in runq.json, the migration job, and the job
# whose executions run Cloud Run Job functions. All run
# the same image with different arguments. Cloud Build (cloudbuild.yaml) deploys every release
# after the first apply: the image and gcloud's client fields are ignored here.

resource "google_cloud_run_v2_service" "api" {
  name     = local.api_service
  location = var.region
  # Public: every route authenticates itself (user JWTs on /jobs, Google OIDC on /internal/*).
  ingress = "INGRESS_TRAFFIC_ALL"

  template {
    service_account                  = google_service_account.runq["api"].email
    max_instance_request_concurrency = var.api_concurrency
    # Status long-polls (`?wait=`) stay well under it; Scheduler's sweep runs inline in a request.
    timeout = "300s"

    scaling {
      min_instance_count = var.api_min_instances
      max_instance_count = var.api_max_instances
    }

    volumes {
      name = "cloudsql"
      cloud_sql_instance {
        instances = [google_sql_database_instance.runq.connection_name]
      }
    }

    containers {
      image = var.image
      args  = ["api"]

      resources {
        limits = {
          cpu    = var.api_cpu
          memory = var.api_memory
        }
        cpu_idle = true
      }

      dynamic "env" {
        for_each = local.api_env
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = local.api_secrets
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }

      volume_mounts {
        name       = "cloudsql"
        mount_path = "/cloudsql"
      }

      startup_probe {
        http_get {
          path = "/readyz"
        }
        period_seconds    = 2
        failure_threshold = 30
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [client, client_version, template[0].containers[0].image]
  }

  depends_on = [google_secret_manager_secret_version.runq, google_secret_manager_secret_iam_member.reader]
}

resource "google_cloud_run_v2_service_iam_member" "api_public" {
  # checkov:skip=CKV_GCP_102: The public API is meant for browsers and clients; runq itself rejects every request to /jobs without a valid user JWT and every /internal/* call without the right Google OIDC token.
  name     = google_cloud_run_v2_service.api.name
  location = google_cloud_run_v2_service.api.location
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service" "worker" {
  for_each = local.queues
  name     = each.value.service
  location = var.region
  # Reached by Pub/Sub push over the internet path, but only with a token Cloud Run's IAM
  # accepts (runq-push is the only invoker) and runq checks again (audience and account).
  ingress = "INGRESS_TRAFFIC_ALL"

  template {
    service_account                  = google_service_account.runq["worker"].email
    max_instance_request_concurrency = each.value.concurrency
    # At least the subscription's ack deadline: the push request is the run (inline functions).
    timeout = "${each.value.timeout_seconds}s"

    scaling {
      min_instance_count = 0
      max_instance_count = each.value.max_instances
    }

    volumes {
      name = "cloudsql"
      cloud_sql_instance {
        instances = [google_sql_database_instance.runq.connection_name]
      }
    }

    containers {
      image = var.image
      args  = ["worker", "--queue", each.key]

      resources {
        limits = {
          cpu    = each.value.cpu
          memory = each.value.memory
        }
        # Request-based billing for inline runs, which live inside the push request; a queue of
        # detached functions (runq.json: cpu_always_allocated) keeps its CPU between requests.
        cpu_idle = !each.value.cpu_always_allocated
      }

      dynamic "env" {
        for_each = local.worker_env[each.key]
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = local.worker_secrets
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }

      volume_mounts {
        name       = "cloudsql"
        mount_path = "/cloudsql"
      }

      startup_probe {
        http_get {
          path = "/readyz"
        }
        period_seconds    = 2
        failure_threshold = 30
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [client, client_version, template[0].containers[0].image]
  }

  depends_on = [google_secret_manager_secret_version.runq, google_secret_manager_secret_iam_member.reader]
}

# Only Pub/Sub's push account may invoke the workers.
resource "google_cloud_run_v2_service_iam_member" "push_invokes_worker" {
  for_each = local.queues
  name     = google_cloud_run_v2_service.worker[each.key].name
  location = google_cloud_run_v2_service.worker[each.key].location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.runq["push"].email}"
}

# `runq migrate` as a Cloud Run job: cloudbuild.yaml runs it, and waits for it, before any deploy.
resource "google_cloud_run_v2_job" "migrate" {
  name     = "runq-migrate"
  location = var.region

  template {
    task_count = 1
    template {
      service_account = google_service_account.runq["migrate"].email
      max_retries     = 1
      timeout         = "1800s"

      volumes {
        name = "cloudsql"
        cloud_sql_instance {
          instances = [google_sql_database_instance.runq.connection_name]
        }
      }

      containers {
        image = var.image
        args  = ["migrate"]

        dynamic "env" {
          for_each = local.migrate_secrets
          content {
            name = env.key
            value_source {
              secret_key_ref {
                secret  = env.value
                version = "latest"
              }
            }
          }
        }

        volume_mounts {
          name       = "cloudsql"
          mount_path = "/cloudsql"
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [client, client_version, template[0].template[0].containers[0].image]
  }

  depends_on = [google_secret_manager_secret_version.runq, google_secret_manager_secret_iam_member.reader]
}

# `runq exec` as a Cloud Run job: a worker starts one execution per run of a Cloud Run Job
# function (RUNQ_EXEC_JOB), its arguments overridden with the claim it runs
# (`exec --job-id J --claim-id C`) and its timeout with the function's. It runs as the workers do.
resource "google_cloud_run_v2_job" "exec" {
  name     = local.exec_job
  location = var.region

  template {
    task_count = 1
    template {
      service_account = google_service_account.runq["worker"].email
      # runq's own attempts and the claim's lease decide what is run again.
      max_retries = 0
      timeout     = "86400s"

      volumes {
        name = "cloudsql"
        cloud_sql_instance {
          instances = [google_sql_database_instance.runq.connection_name]
        }
      }

      containers {
        image = var.image
        args  = ["exec"]

        dynamic "env" {
          for_each = local.exec_env
          content {
            name  = env.key
            value = env.value
          }
        }
        dynamic "env" {
          for_each = local.worker_secrets
          content {
            name = env.key
            value_source {
              secret_key_ref {
                secret  = env.value
                version = "latest"
              }
            }
          }
        }

        volume_mounts {
          name       = "cloudsql"
          mount_path = "/cloudsql"
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [client, client_version, template[0].template[0].containers[0].image]
  }

  depends_on = [google_secret_manager_secret_version.runq, google_secret_manager_secret_iam_member.reader]
}

# The workers start its executions with overrides (run.jobs.runWithOverrides), on this job only.
resource "google_cloud_run_v2_job_iam_member" "worker_runs_exec" {
  name     = google_cloud_run_v2_job.exec.name
  location = google_cloud_run_v2_job.exec.location
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.runq["worker"].email}"
}
