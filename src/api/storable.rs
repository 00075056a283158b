//! Client input that Postgres can't store, refused with a 422 before anything is written: a NUL
//! character in text, and in `jsonb` a NUL (`\u0000`) in a string or key, or a UTF-16
//! surrogate escape without its pair.

use serde_json::Value;
use serde_json::value::RawValue;

use super::ApiError;

/// Refuses `value` (the client's `field`) when it holds a NUL, which no Postgres `text` can.
pub(super) fn text(field: &'static str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::invalid(
            field,
            format!("{field} contains a NUL character (\\u0000), which can't be stored"),
        ));
    }
    Ok(())
}

/// Refuses JSON that `jsonb` can't store. `at` prefixes the detail (a batch's `jobs[i]: `).
///
/// Raw JSON text can hold a NUL or a surrogate only as a `\u` escape, so the text is scanned for
/// `\u0000` and `\uD800`..`\uDFFF` first; only when one may be there is it parsed and walked, so
/// an escaped backslash (`\\u0000`, the six characters `\u0000`) is told from a real escape and a
/// valid surrogate pair (an emoji) from a lone half.
pub(super) fn json(field: &'static str, at: &str, raw: &RawValue) -> Result<(), ApiError> {
    if !may_hold_unstorable(raw.get().as_bytes()) {
        return Ok(());
    }
    let refuse = |what: &str| ApiError::invalid(field, format!("{at}{field} {what}, which can't be stored"));
    // serde_json refuses a lone surrogate when it decodes the string (and nesting over 128 deep,
    // which is then refused too: it can't be checked).
    let value: Value = serde_json::from_str(raw.get())
        .map_err(|e| refuse(&format!("hold a \\u escape of a lone surrogate or can't be checked for one ({e})")))?;
    if crate::store::holds_nul(&value) {
        return Err(refuse("contain a NUL character (\\u0000) in a string or key"));
    }
    Ok(())
}

/// Whether `raw` has a literal NUL, or a `\u` escape of U+0000 or of a surrogate, perhaps
/// preceded by an escaped backslash (a false alarm that [`json`] then clears).
fn may_hold_unstorable(raw: &[u8]) -> bool {
    raw.contains(&0)
        || raw.windows(6).any(|w| {
            w[0] == b'\\'
                && w[1] == b'u'
                && (w[2..].eq_ignore_ascii_case(b"0000")
                    || (w[2].eq_ignore_ascii_case(&b'd') && (b'8'..=b'f').contains(&w[3].to_ascii_lowercase())))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> bool {
        json("args", "", &RawValue::from_string(raw.to_owned()).unwrap()).is_ok()
    }

    #[test]
    fn nul_and_lone_surrogates_are_refused_anywhere() {
        for bad in [
            r#"{"value":"a\u0000b"}"#,
            r#"{"a\u0000":1}"#,
            r#"{"deep":[1,{"x":["ok","\u0000"]}]}"#,
            r#""\u0000""#,
            r#"{"value":"\\\u0000"}"#,
            r#"{"value":"\ud800"}"#,
            r#"{"value":"\uDC00x"}"#,
            r#"{"\ud83d":1}"#,
        ] {
            assert!(!check(bad), "{bad} is refused");
        }
    }

    #[test]
    fn look_alikes_are_accepted() {
        for good in [
            r#"{}"#,
            r#"{"value":"\\u0000"}"#,
            r#"{"value":"\\\\u0000"}"#,
            r#"{"value":"\u0001 \u00e9 \u1000"}"#,
            r#"{"value":"\ud83d\ude00"}"#,
            r#"{"value":"\\ud800"}"#,
            r#"{"value":"u0000 0000"}"#,
        ] {
            assert!(check(good), "{good} is accepted");
        }
    }

    #[test]
    fn text_with_nul_is_refused() {
        assert!(text("function", "a\0b").is_err());
        assert!(text("function", "echo").is_ok());
    }
}
