# Providers. Terraform state holds the generated database passwords and the HS256 secret:
# keep it in a GCS bucket only the operators can read (docs/deploy.md, "State").
terraform {
  required_version = ">= 1.6"
  # State in GCS: `terraform init -backend-config=bucket=PROJECT-tfstate` (docs/deploy.md, step 2).
  backend "gcs" {
    prefix = "runq"
  }
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
