# Everything a deployment chooses. Queue sizes (concurrency, max instances, timeouts, CPU and
# memory) and the schedules are not variables: they come from runq.json, which
# `runq infra export` prints from the code, so production can't drift from it.

variable "project_id" {
  description = "The Google Cloud project runq runs in."
  type        = string
}

variable "region" {
  description = "Region of Cloud Run, Cloud SQL, Artifact Registry, Cloud Scheduler and the results bucket."
  type        = string
  default     = "europe-west1"
}

variable "image" {
  description = <<-EOT
    Image of the first apply only. Cloud Build (cloudbuild.yaml) deploys every later image, and
    the services and the migration job ignore changes to it, so a re-apply never rolls back a
    release. The default is Google's sample container, so the first apply needs no build yet.
  EOT
  type        = string
  default     = "us-docker.pkg.dev/cloudrun/container/hello"
}

variable "repository" {
  description = "Artifact Registry repository (Docker) that Cloud Build pushes runq's image to."
  type        = string
  default     = "runq"
}

variable "sql_instance_name" {
  description = "Cloud SQL instance name (cloudbuild.yaml's _SQL_INSTANCE)."
  type        = string
  default     = "runq"
}

variable "sql_database_version" {
  description = "PostgreSQL major version of the Cloud SQL instance."
  type        = string
  default     = "POSTGRES_18"
}

variable "sql_tier" {
  description = "Machine type of the Cloud SQL instance (runq's throughput is bound by commits: give it cores)."
  type        = string
  default     = "db-custom-2-7680"
}

variable "sql_availability_type" {
  description = "ZONAL, or REGIONAL for a standby in another zone (recommended in production)."
  type        = string
  default     = "REGIONAL"
}

variable "sql_disk_size_gb" {
  description = "Initial SSD size; it grows automatically."
  type        = number
  default     = 20
}

variable "sql_deletion_protection" {
  description = "Refuse to delete the database instance (turn off only to tear a test project down)."
  type        = bool
  default     = true
}

variable "api_concurrency" {
  description = "Requests one API instance serves at once."
  type        = number
  default     = 80
}

variable "api_min_instances" {
  description = "API instances kept warm (0 lets it scale to zero, at the cost of cold starts)."
  type        = number
  default     = 1
}

variable "api_max_instances" {
  description = "Most API instances."
  type        = number
  default     = 10
}

variable "api_cpu" {
  description = "CPU of one API instance."
  type        = string
  default     = "1"
}

variable "api_memory" {
  description = "Memory of one API instance."
  type        = string
  default     = "512Mi"
}

variable "db_max_connections" {
  description = "RUNQ_DB_MAX_CONNECTIONS of each instance. Instances x this must stay under the server's max_connections."
  type        = number
  default     = 8
}

variable "auth_jwks_url" {
  description = "Production sign-in: the identity provider's JWKS URL (RS256/ES256). Empty: HS256 tokens only."
  type        = string
  default     = ""
}

variable "auth_issuer" {
  description = "Required `iss` of user tokens; mandatory with auth_jwks_url."
  type        = string
  default     = ""
}

variable "auth_audience" {
  description = "Required `aud` of user tokens; mandatory with auth_jwks_url."
  type        = string
  default     = ""
}

variable "cors_origins" {
  description = "Comma-separated browser origins allowed to call the API (RUNQ_CORS_ORIGINS)."
  type        = string
  default     = ""
}

variable "results_retention_days" {
  description = "Large results offloaded to GCS are deleted after this many days."
  type        = number
  default     = 30
}
