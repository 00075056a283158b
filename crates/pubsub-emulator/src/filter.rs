//! Subscription filters: the attribute subset of Pub/Sub's filter syntax.
//!
//! `attributes:KEY`, `attributes.KEY = "v"`, `attributes.KEY != "v"`,
//! `hasPrefix(attributes.KEY, "p")`, combined with `AND`, `OR`, `NOT`/`-` and parentheses.
//! Keys may be quoted (`attributes."my key"`).

use std::collections::HashMap;

/// A parsed filter; evaluated against a message's attributes at publish time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filter {
    Has(String),
    Eq(String, String),
    Ne(String, String),
    Prefix(String, String),
    Not(Box<Filter>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

impl Filter {
    /// Parses `src`; the error text is what INVALID_ARGUMENT reports.
    pub(crate) fn parse(src: &str) -> Result<Self, String> {
        if src.len() > 256 {
            return Err("filter is longer than 256 bytes".into());
        }
        let mut p = Parser { toks: tokenize(src)?, pos: 0 };
        let f = p.or()?;
        if p.pos != p.toks.len() {
            return Err(format!("unexpected {:?} in filter", p.toks[p.pos]));
        }
        Ok(f)
    }

    pub(crate) fn matches(&self, attrs: &HashMap<String, String>) -> bool {
        match self {
            Self::Has(k) => attrs.contains_key(k),
            Self::Eq(k, v) => attrs.get(k) == Some(v),
            Self::Ne(k, v) => attrs.get(k).is_some_and(|a| a != v),
            Self::Prefix(k, p) => attrs.get(k).is_some_and(|a| a.starts_with(p.as_str())),
            Self::Not(f) => !f.matches(attrs),
            Self::And(fs) => fs.iter().all(|f| f.matches(attrs)),
            Self::Or(fs) => fs.iter().any(|f| f.matches(attrs)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Sym(&'static str),
}

fn tokenize(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut it = src.chars().peekable();
    while let Some(&c) = it.peek() {
        match c {
            c if c.is_whitespace() => {
                it.next();
            }
            '"' => {
                it.next();
                let mut s = String::new();
                loop {
                    match it.next() {
                        Some('"') => break,
                        Some('\\') => s.extend(it.next()),
                        Some(c) => s.push(c),
                        None => return Err("unterminated string in filter".into()),
                    }
                }
                out.push(Tok::Str(s));
            }
            '(' | ')' | ',' | ':' | '.' | '-' | '=' => {
                it.next();
                out.push(Tok::Sym(match c {
                    '(' => "(",
                    ')' => ")",
                    ',' => ",",
                    ':' => ":",
                    '.' => ".",
                    '-' => "-",
                    _ => "=",
                }));
            }
            '!' => {
                it.next();
                if it.next() != Some('=') {
                    return Err("expected != in filter".into());
                }
                out.push(Tok::Sym("!="));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut w = String::new();
                while let Some(&c) = it.peek() {
                    if c.is_alphanumeric() || c == '_' {
                        w.push(c);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(w));
            }
            c => return Err(format!("unexpected character {c:?} in filter")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), String> {
        match self.next() {
            Some(Tok::Sym(s)) if s == sym => Ok(()),
            other => Err(format!("expected {sym:?} in filter, found {other:?}")),
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut parts = vec![self.and()?];
        while self.is_word("OR") {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Filter::Or(parts) })
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut parts = vec![self.unary()?];
        while self.is_word("AND") {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Filter::And(parts) })
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.is_word("NOT") || self.peek() == Some(&Tok::Sym("-")) {
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::Sym("(")) {
            self.pos += 1;
            let f = self.or()?;
            self.expect(")")?;
            return Ok(f);
        }
        if self.is_word("hasPrefix") {
            self.pos += 1;
            self.expect("(")?;
            let key = self.attribute()?;
            self.expect(",")?;
            let prefix = self.string()?;
            self.expect(")")?;
            return Ok(Filter::Prefix(key, prefix));
        }
        match self.next() {
            Some(Tok::Word(w)) if w == "attributes" => {}
            other => return Err(format!("expected attributes in filter, found {other:?}")),
        }
        match self.next() {
            Some(Tok::Sym(":")) => Ok(Filter::Has(self.key()?)),
            Some(Tok::Sym(".")) => {
                let key = self.key()?;
                match self.next() {
                    Some(Tok::Sym("=")) => Ok(Filter::Eq(key, self.string()?)),
                    Some(Tok::Sym("!=")) => Ok(Filter::Ne(key, self.string()?)),
                    other => Err(format!("expected = or != in filter, found {other:?}")),
                }
            }
            other => Err(format!("expected : or . in filter, found {other:?}")),
        }
    }

    fn attribute(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) if w == "attributes" => {}
            other => return Err(format!("expected attributes in filter, found {other:?}")),
        }
        self.expect(".")?;
        self.key()
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) | Some(Tok::Str(w)) => Ok(w),
            other => Err(format!("expected an attribute name in filter, found {other:?}")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            other => Err(format!("expected a quoted string in filter, found {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn filters_match_attributes() {
        let f = Filter::parse(r#"attributes.kind = "a" AND NOT attributes:skip"#).unwrap();
        assert!(f.matches(&attrs(&[("kind", "a")])));
        assert!(!f.matches(&attrs(&[("kind", "a"), ("skip", "")])));
        assert!(!f.matches(&attrs(&[("kind", "b")])));
        let f = Filter::parse(r#"hasPrefix(attributes.p, "ab") OR attributes.x != "1""#).unwrap();
        assert!(f.matches(&attrs(&[("p", "abc")])));
        assert!(f.matches(&attrs(&[("x", "2")])));
        assert!(!f.matches(&attrs(&[("x", "1")])));
        assert!(Filter::parse("attributes.").is_err());
        assert!(Filter::parse("bogus").is_err());
    }
}
