output "api_url" {
  description = "The public API (RUNQ_API_URL for the CLI)."
  value       = local.api_url
}

output "worker_urls" {
  description = "Each queue's worker service."
  value       = local.worker_urls
}

output "image_repository" {
  description = "Where cloudbuild.yaml pushes the image."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.runq.repository_id}/runq"
}

output "sql_connection_name" {
  description = "For the Cloud SQL Auth Proxy (docs/deploy.md, step 4) and cloudbuild.yaml's _SQL_INSTANCE."
  value       = google_sql_database_instance.runq.connection_name
}

output "deploy_service_account" {
  description = "The account Cloud Build runs as (gcloud builds submit --service-account)."
  value       = google_service_account.runq["deploy"].id
}
