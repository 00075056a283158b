//! Resource names: `projects/{project}/topics/{topic}` and
//! `projects/{project}/subscriptions/{subscription}`, checked by Pub/Sub's rules.

use super::error::{ApiError, ApiResult};

/// Whether `id` is a valid topic or subscription id: 3–255 characters, starting with a
/// letter, from `[A-Za-z0-9-_.~+%]`, and not starting with `goog`.
pub(crate) fn valid_id(id: &str) -> bool {
    (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !id.to_ascii_lowercase().starts_with("goog")
}

/// Whether `p` can be a project id or number. Google's emulator accepts any project; we
/// only refuse what cannot be one path segment.
fn valid_project(p: &str) -> bool {
    !p.is_empty() && p.len() <= 100 && !p.contains('/') && !p.contains(':')
}

fn parse(name: &str, collection: &str) -> ApiResult<(String, String)> {
    let bad = || ApiError::invalid(format!("Invalid [{collection}] name: (name={name})"));
    let rest = name.strip_prefix("projects/").ok_or_else(bad)?;
    let (project, rest) = rest.split_once('/').ok_or_else(bad)?;
    let id = rest.strip_prefix(collection).and_then(|r| r.strip_prefix('/')).ok_or_else(bad)?;
    if !valid_project(project) || !valid_id(id) {
        return Err(bad());
    }
    Ok((project.to_string(), id.to_string()))
}

/// Checks a full topic name; returns (project, topic id).
pub(crate) fn topic(name: &str) -> ApiResult<(String, String)> {
    parse(name, "topics")
}

/// Checks a full subscription name; returns (project, subscription id).
pub(crate) fn subscription(name: &str) -> ApiResult<(String, String)> {
    parse(name, "subscriptions")
}

/// Checks `projects/{project}`; returns the project.
pub(crate) fn project(name: &str) -> ApiResult<String> {
    match name.strip_prefix("projects/") {
        Some(p) if valid_project(p) => Ok(p.to_string()),
        _ => Err(ApiError::invalid(format!("Invalid [projects] name: (name={name})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_pubsub_rules() {
        assert!(valid_id("abc"));
        assert!(valid_id("a-b_c.d~e+f%g1"));
        assert!(!valid_id("ab"));
        assert!(!valid_id(&"a".repeat(256)));
        assert!(valid_id(&"a".repeat(255)));
        assert!(!valid_id("1abc"));
        assert!(!valid_id("goog-topic"));
        assert!(!valid_id("abc def"));
        assert!(topic("projects/p/topics/t1x").is_ok());
        assert!(topic("projects/p/subscriptions/t1x").is_err());
        assert!(subscription("projects//subscriptions/s1x").is_err());
    }
}
