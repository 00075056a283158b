//! The dashboard's job filters (`id`, `queue`, `due`, `error`, `arg`, `held`, `held_on`,
//! `publish_failing`, `dead_lettered`, `lease_expired`), checked once for both places that take
//! them: `GET /jobs` (a query string) and `POST /operations` (a JSON filter), so "act on these"
//! acts on exactly the jobs listed. Each bad value is a 422 naming its parameter.

use uuid::Uuid;

use super::ApiError;
use crate::store::{ArgEquals, Narrowing};

/// Longest error text or args field name searched for.
pub const MAX_SEARCH_CHARS: usize = 200;

/// The filters as a client gave them; each field's name where the client wrote it (the query
/// parameter, or `filter.<name>` in a body) comes with it.
#[derive(Debug, Default)]
pub(super) struct Asked<'a> {
    pub id: Option<(&'static str, &'a str)>,
    pub queue: Option<(&'static str, &'a str)>,
    pub due: Option<(&'static str, Flag<'a>)>,
    pub error: Option<(&'static str, &'a str)>,
    pub arg: Option<(&'static str, &'a str)>,
    pub held: Option<(&'static str, Flag<'a>)>,
    pub held_on: Option<(&'static str, &'a str)>,
    pub publish_failing: Option<(&'static str, Flag<'a>)>,
    pub dead_lettered: Option<(&'static str, Flag<'a>)>,
    pub lease_expired: Option<(&'static str, Flag<'a>)>,
}

impl Asked<'_> {
    /// True when no filter was given.
    pub fn is_empty(&self) -> bool {
        self.id.is_none()
            && self.queue.is_none()
            && self.due.is_none()
            && self.error.is_none()
            && self.arg.is_none()
            && self.held.is_none()
            && self.held_on.is_none()
            && self.publish_failing.is_none()
            && self.dead_lettered.is_none()
            && self.lease_expired.is_none()
    }
}

/// A text filter, if given, with its parameter's name.
pub(super) fn given<'a>(name: &'static str, value: &'a Option<String>) -> Option<(&'static str, &'a str)> {
    value.as_deref().map(|v| (name, v))
}

/// A yes/no filter of a query string, if given, with its parameter's name.
pub(super) fn given_flag<'a>(name: &'static str, value: &'a Option<String>) -> Option<(&'static str, Flag<'a>)> {
    value.as_deref().map(|v| (name, Flag::Text(v)))
}

/// A yes/no filter: a query string's text (`true` or `false`), or a JSON body's boolean.
#[derive(Debug, Clone, Copy)]
pub(super) enum Flag<'a> {
    Text(&'a str),
    Bool(bool),
}

impl Flag<'_> {
    fn parse(self, field: &'static str) -> Result<bool, ApiError> {
        match self {
            Flag::Bool(b) => Ok(b),
            Flag::Text("true") => Ok(true),
            Flag::Text("false") => Ok(false),
            Flag::Text(other) => Err(ApiError::invalid(field, format!("{field} must be true or false, not {other:?}"))),
        }
    }
}

/// Text a filter compares against: no NUL, not empty, at most [`MAX_SEARCH_CHARS`].
fn text(field: &'static str, value: &str) -> Result<String, ApiError> {
    super::storable::text(field, value)?;
    if value.is_empty() {
        return Err(ApiError::invalid(field, format!("{field} is empty: leave it out to not filter by it")));
    }
    if value.chars().count() > MAX_SEARCH_CHARS {
        return Err(ApiError::invalid(field, format!("{field} is longer than {MAX_SEARCH_CHARS} characters")));
    }
    Ok(value.to_owned())
}

/// `field=value`: a top-level args field and the value it must equal. The value is JSON when
/// it is a JSON number or a quoted JSON string (`n=42`, `name="42"`), else the text as a string
/// (`name=acme`); other JSON (`true`, `null`, arrays, objects) is refused.
fn arg(field: &'static str, raw: &str) -> Result<ArgEquals, ApiError> {
    let Some((name, value)) = raw.split_once('=') else {
        return Err(ApiError::invalid(field, format!("{field} must be field=value (e.g. customer=acme or n=42)")));
    };
    let name = text(field, name)?;
    super::storable::text(field, value)?;
    let value = match serde_json::from_str::<serde_json::Value>(value) {
        Ok(v @ (serde_json::Value::String(_) | serde_json::Value::Number(_))) => v,
        Ok(_) => {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field}: {value:?} is neither a string nor a number (quote it to match the text: \"{value}\")"
                ),
            ));
        }
        Err(_) => serde_json::Value::String(value.to_owned()),
    };
    Ok(ArgEquals { field: name, value })
}

/// Checks what a client asked for into the store's [`Narrowing`].
pub(super) fn check(asked: &Asked<'_>) -> Result<Narrowing, ApiError> {
    let flag = |f: Option<(&'static str, Flag<'_>)>| f.map(|(name, v)| v.parse(name)).transpose();
    let id = asked
        .id
        .map(|(name, raw)| {
            Uuid::parse_str(raw)
                .map_err(|_| ApiError::invalid(name, format!("{name}: {raw:?} is not a job id (a UUID)")))
        })
        .transpose()?;
    let queue = asked.queue.map(|(name, v)| text(name, v)).transpose()?;
    let error_text = asked.error.map(|(name, v)| text(name, v)).transpose()?;
    let arg = asked.arg.map(|(name, v)| arg(name, v)).transpose()?;
    let held_on = asked.held_on.map(|(name, v)| text(name, v)).transpose()?;
    Ok(Narrowing {
        id,
        queue,
        due: flag(asked.due)?,
        error_text,
        arg,
        held: flag(asked.held)?,
        held_on,
        publish_failing: flag(asked.publish_failing)?,
        dead_lettered: flag(asked.dead_lettered)?,
        lease_expired: flag(asked.lease_expired)?,
    })
}

/// The parameter to name when an unindexed search ran over its time: the error text, else the
/// args field.
pub(super) fn search_field(asked: &Asked<'_>) -> &'static str {
    asked.error.or(asked.arg).map_or("error", |(name, _)| name)
}

/// The 422 of a search cut off by its statement timeout.
pub(super) fn timed_out(asked: &Asked<'_>, timeout: std::time::Duration) -> ApiError {
    let field = search_field(asked);
    ApiError::invalid(
        field,
        format!(
            "the search by {field} ran over its {} s limit (it reads every job the other filters leave): \
             narrow it with status, function, queue or a time range",
            timeout.as_secs_f64()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_values_are_numbers_strings_or_text() {
        assert_eq!(arg("arg", "n=42").unwrap().value, serde_json::json!(42));
        assert_eq!(arg("arg", "name=\"42\"").unwrap().value, serde_json::json!("42"));
        assert_eq!(arg("arg", "name=acme corp").unwrap().value, serde_json::json!("acme corp"));
        assert_eq!(arg("arg", "eq=a=b").unwrap(), ArgEquals { field: "eq".into(), value: serde_json::json!("a=b") });
        assert!(arg("arg", "flag=true").is_err());
        assert!(arg("arg", "list=[1]").is_err());
        assert!(arg("arg", "novalue").is_err());
        assert!(arg("arg", "=x").is_err());
    }

    #[test]
    fn like_patterns_escape_the_wildcards() {
        assert_eq!(crate::store::like_pattern("100%_done\\"), "%100\\%\\_done\\\\%");
        assert_eq!(crate::store::like_pattern("plain"), "%plain%");
    }

    #[test]
    fn flags_are_true_or_false() {
        assert!(Flag::Text("true").parse("held").unwrap());
        assert!(!Flag::Text("false").parse("held").unwrap());
        assert!(Flag::Text("yes").parse("held").is_err());
        assert!(Flag::Bool(true).parse("held").unwrap());
    }
}
