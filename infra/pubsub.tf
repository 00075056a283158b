# Pub/Sub (docs/architecture.md): per queue in runq.json one topic, one push subscription to its
# worker service's /push with an OIDC token (push account, audience = the worker's URL), the
# ack deadline, retry and dead-letter policies; the dead-letter topic pushes to the API.

resource "google_pubsub_topic" "queue" {
  # checkov:skip=CKV_GCP_83: Google-managed encryption; messages carry only job ids (docs/architecture.md), and a customer-managed key is an organisation policy choice (see CKV_GCP_84 in registry.tf).
  for_each                   = local.queues
  name                       = each.value.topic
  message_retention_duration = "604800s"
}

resource "google_pubsub_topic" "dead" {
  # checkov:skip=CKV_GCP_83: Google-managed encryption; see the queue topics.
  name                       = local.runq.dead_letter_topic
  message_retention_duration = "604800s"
}

resource "google_pubsub_subscription" "queue" {
  for_each = local.queues
  name     = each.value.subscription
  topic    = google_pubsub_topic.queue[each.key].id

  # Also the push request's timeout: a worker's request timeout must be at least this.
  ack_deadline_seconds       = each.value.ack_deadline_seconds
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = "" # never expire, however quiet the queue
  }

  push_config {
    push_endpoint = "${local.worker_urls[each.key]}/push"
    oidc_token {
      service_account_email = google_service_account.runq["push"].email
      audience              = local.worker_urls[each.key]
    }
  }

  retry_policy {
    minimum_backoff = "${each.value.min_backoff_seconds}s"
    maximum_backoff = "${each.value.max_backoff_seconds}s"
  }

  # runq's own attempt cap does the real limiting; this only catches deliveries that never got
  # an answer (a worker at max instances answers 429), which the API re-dispatches later.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead.id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  depends_on = [google_pubsub_topic_iam_member.agent_publishes_dead_letters]
}

# The dead-letter topic's push subscription: the API's /internal/dead-letter decides (re-dispatch
# a never-claimed job later, fail it as undeliverable after several rounds).
resource "google_pubsub_subscription" "dead" {
  name                       = "runq-dead-letter"
  topic                      = google_pubsub_topic.dead.id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }

  push_config {
    push_endpoint = "${local.api_url}/internal/dead-letter"
    oidc_token {
      service_account_email = google_service_account.runq["dead_letter"].email
      audience              = local.dead_letter_audience
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}

# Dead-lettering is done by Pub/Sub's service agent: it publishes to the dead-letter topic and
# acknowledges the message on the source subscription.
resource "google_pubsub_topic_iam_member" "agent_publishes_dead_letters" {
  topic  = google_pubsub_topic.dead.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "agent_acks_dead_letters" {
  for_each     = local.queues
  subscription = google_pubsub_subscription.queue[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
