//! The `wordcount` built-in: counts the words of inline text or of a GCS object.
//!
//! It exercises the two GCS paths of a run: an input read by `gs://` URI (through the
//! [`BlobStore`], size-capped), and a result that grows with its input (`counts` has one entry per
//! distinct word), which the worker offloads to GCS when it passes the inline limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Context, Function, FunctionError};
use crate::storage::{BlobStore, GcsUri, StorageError};

/// How many of the most frequent words `top` lists.
pub const WORDCOUNT_TOP: usize = 10;
/// Progress is reported (and cancellation checked) after each slice of this many bytes.
const SLICE_BYTES: usize = 1 << 20;

/// Counts words and lines. Needs a [`BlobStore`] only for `gcs_uri` inputs.
#[derive(Debug, Clone, Default)]
pub struct Wordcount {
    /// Where `gcs_uri` inputs are read from; `None` when runq has no GCS configured, in which case
    /// such jobs fail with a fatal error saying so.
    pub store: Option<Arc<BlobStore>>,
}

impl Wordcount {
    /// A `wordcount` reading `gcs_uri` inputs through `store`.
    pub fn new(store: Option<Arc<BlobStore>>) -> Self {
        Self { store }
    }
}

/// `wordcount`'s arguments: exactly one of `text` and `gcs_uri`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordcountArgs {
    /// The text itself.
    #[serde(default)]
    pub text: Option<String>,
    /// A `gs://bucket/object` holding UTF-8 text.
    #[serde(default)]
    pub gcs_uri: Option<String>,
}

/// What `wordcount` returns.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WordcountOutput {
    /// Words in all, counting repeats.
    pub words: u64,
    /// Lines, as [`str::lines`] counts them (a final line needs no newline).
    pub lines: u64,
    /// The most frequent words, most frequent first, ties in alphabetical order; each
    /// `[word, count]`.
    pub top: Vec<(String, u64)>,
    /// Every distinct word and its count, sorted by word.
    pub counts: BTreeMap<String, u64>,
}

impl Function for Wordcount {
    type Args = WordcountArgs;
    type Output = WordcountOutput;

    fn name(&self) -> &'static str {
        "wordcount"
    }

    fn check(&self, args: &WordcountArgs) -> Result<(), String> {
        match (&args.text, &args.gcs_uri) {
            (Some(_), Some(_)) => Err("give either text or gcs_uri, not both".into()),
            (None, None) => Err("give text or gcs_uri (gs://bucket/object)".into()),
            (None, Some(uri)) => GcsUri::parse(uri).map(drop).map_err(|e| format!("gcs_uri: {e}")),
            (Some(_), None) => Ok(()),
        }
    }

    async fn run(&self, ctx: Context, args: WordcountArgs) -> Result<WordcountOutput, FunctionError> {
        let text = match (args.text, args.gcs_uri) {
            (Some(text), None) => text,
            (None, Some(uri)) => {
                // Its own store if it was given one, else the worker's (the run context's).
                let store = self.store.clone().or_else(|| ctx.storage().cloned()).ok_or_else(|| {
                    FunctionError::Fatal(format!(
                        "cannot read {uri}: this runq has no GCS access configured \
                         (Google credentials, or STORAGE_EMULATOR_HOST for an emulator)"
                    ))
                })?;
                ctx.progress(0.0, format!("reading {uri}"));
                let bytes = store.get(&uri).await?;
                String::from_utf8(bytes.into()).map_err(|e| {
                    FunctionError::Fatal(format!(
                        "{uri} is not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ))
                })?
            }
            _ => return Err(FunctionError::Fatal("give exactly one of text and gcs_uri".into())),
        };
        // Counting is CPU-bound: keep it off the async runtime so it can't stall other runs.
        tokio::task::spawn_blocking(move || count(&text, &ctx))
            .await
            .map_err(|e| FunctionError::Retryable(format!("counting task failed: {e}")))?
    }
}

/// Lets a function `?` a storage call: transient failures retry the job, the rest fail it. (Here
/// rather than in `storage`, so storage doesn't depend on functions.)
impl From<StorageError> for FunctionError {
    fn from(e: StorageError) -> Self {
        if e.is_retryable() { Self::Retryable(e.to_string()) } else { Self::Fatal(e.to_string()) }
    }
}

/// Counts `text` in one pass: words are maximal runs of alphanumeric characters (any script),
/// lowercased. Reports progress per megabyte and stops if the run is cancelled.
fn count(text: &str, ctx: &Context) -> Result<WordcountOutput, FunctionError> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0u64;
    let mut lower = String::new();
    let mut slice_start = 0;
    while slice_start < text.len() {
        if ctx.is_cancelled() {
            return Err(FunctionError::Cancelled);
        }
        // A slice ends at a separator (or the end), so no word is split between two slices.
        let mut slice_end = text.len().min(slice_start + SLICE_BYTES);
        while !text.is_char_boundary(slice_end) {
            slice_end += 1;
        }
        slice_end += text[slice_end..].find(|c: char| !c.is_alphanumeric()).unwrap_or(text.len() - slice_end);
        for word in text[slice_start..slice_end].split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            words += 1;
            lower.clear();
            lower.extend(word.chars().flat_map(char::to_lowercase));
            // Look up by &str first: a repeated word costs no allocation.
            match counts.get_mut(lower.as_str()) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(lower.clone(), 1);
                }
            }
        }
        slice_start = slice_end;
        if slice_start < text.len() {
            ctx.progress(
                slice_start as f32 / text.len() as f32,
                format!("counted {slice_start} of {} bytes", text.len()),
            );
        }
    }
    let mut top: Vec<(&String, u64)> = counts.iter().map(|(w, n)| (w, *n)).collect();
    let by_rank = |a: &(&String, u64), b: &(&String, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
    if top.len() > WORDCOUNT_TOP {
        top.select_nth_unstable_by(WORDCOUNT_TOP - 1, by_rank);
        top.truncate(WORDCOUNT_TOP);
    }
    top.sort_unstable_by(by_rank);
    let top = top.into_iter().map(|(w, n)| (w.clone(), n)).collect();
    let lines = text.lines().count() as u64;
    ctx.progress(1.0, format!("{words} words, {} distinct", counts.len()));
    Ok(WordcountOutput { words, lines, top, counts: counts.into_iter().collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn ctx() -> Context {
        Context::new(Uuid::now_v7(), 1, 3).0
    }

    fn args(text: Option<&str>, gcs_uri: Option<&str>) -> WordcountArgs {
        WordcountArgs { text: text.map(Into::into), gcs_uri: gcs_uri.map(Into::into) }
    }

    #[test]
    fn counts_unicode_words_case_insensitively() {
        let out = count("Der Bär, der BÄR!\nÉté — été; naïve 42 x2\n\nπ=3.14", &ctx()).unwrap();
        assert_eq!(out.words, 12);
        assert_eq!(out.lines, 4);
        assert_eq!(out.counts["der"], 2);
        assert_eq!(out.counts["bär"], 2);
        assert_eq!(out.counts["été"], 2);
        assert_eq!(out.counts["naïve"], 1);
        assert_eq!(out.counts["x2"], 1);
        assert_eq!(out.counts["π"], 1);
        assert_eq!(out.counts["3"], 1);
        assert_eq!(out.top[..3], [("bär".into(), 2), ("der".into(), 2), ("été".into(), 2)]);
    }

    #[test]
    fn empty_text_has_no_words() {
        let out = count("", &ctx()).unwrap();
        assert_eq!(out, WordcountOutput::default());
        assert_eq!(count(" \n,,\n", &ctx()).unwrap().words, 0);
    }

    #[test]
    fn top_is_the_ten_most_frequent() {
        let text: String = (0..30).flat_map(|i| std::iter::repeat_n(format!("w{i:02} "), i + 1)).collect();
        let out = count(&text, &ctx()).unwrap();
        assert_eq!(out.top.len(), WORDCOUNT_TOP);
        assert_eq!(out.top[0], ("w29".into(), 30));
        assert_eq!(out.top[9], ("w20".into(), 21));
        assert_eq!(out.counts.len(), 30);
        assert_eq!(out.words, (1..=30).sum::<u64>());
    }

    #[test]
    fn words_across_slice_boundaries_stay_whole() {
        // Multi-byte characters straddle the slice boundary; words must not be cut there.
        let word = "ñandú".repeat(1000);
        let text = format!("{} {word} {word}", "a ".repeat(SLICE_BYTES / 2 - 1));
        assert!(!text.is_char_boundary(SLICE_BYTES), "the slice boundary falls inside a character");
        let out = count(&text, &ctx()).unwrap();
        assert_eq!(out.counts[&word], 2);
        assert_eq!(out.counts["a"], (SLICE_BYTES / 2 - 1) as u64);
        assert_eq!(out.words, (SLICE_BYTES / 2 + 1) as u64);
        assert_eq!(out.counts.len(), 2);
    }

    #[test]
    fn cancelled_runs_stop() {
        let (ctx, control) = Context::new(Uuid::now_v7(), 1, 3);
        control.cancel();
        assert_eq!(count("some words", &ctx).unwrap_err(), FunctionError::Cancelled);
    }

    #[test]
    fn check_wants_exactly_one_valid_input() {
        let w = Wordcount::default();
        assert!(w.check(&args(Some("hi"), None)).is_ok());
        assert!(w.check(&args(None, Some("gs://bucket/file.txt"))).is_ok());
        assert!(w.check(&args(Some("hi"), Some("gs://bucket/o"))).unwrap_err().contains("not both"));
        assert!(w.check(&args(None, None)).unwrap_err().contains("text or gcs_uri"));
        assert!(w.check(&args(None, Some("http://x/y"))).unwrap_err().contains("gs://"));
        assert!(w.check(&args(None, Some("gs://bucket"))).unwrap_err().contains("object"));
    }

    #[test]
    fn storage_errors_map_to_retry_intent() {
        let transient = StorageError::Transient { uri: "gs://b/o".into(), message: "503".into() };
        assert!(matches!(FunctionError::from(transient), FunctionError::Retryable(m) if m.contains("503")));
        let missing = StorageError::NotFound { uri: "gs://b/o".into() };
        assert_eq!(FunctionError::from(missing), FunctionError::Fatal("gs://b/o not found".into()));
    }

    #[tokio::test]
    async fn inline_text_runs_without_a_store() {
        let out = Wordcount::default().run(ctx(), args(Some("a b a"), None)).await.unwrap();
        assert_eq!((out.words, out.lines), (3, 1));
        assert_eq!(out.top, [("a".into(), 2), ("b".into(), 1)]);
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["top"], serde_json::json!([["a", 2], ["b", 1]]));
        assert_eq!(json["counts"], serde_json::json!({"a": 2, "b": 1}));
    }
}
