//! Client text that Postgres can't store, refused with a 422 before anything is written: a NUL
//! character. (JSON that `jsonb` can't store is refused by [`crate::submit::validate`].)

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_nul_is_refused() {
        assert!(text("function", "a\0b").is_err());
        assert!(text("function", "echo").is_ok());
    }
}
