//! The Go-template subset stretcher v2 renders a manifest with before parsing it as YAML:
//! `{{ env "A" "B" "default" }}`, `{{ must_env "A" }}`, `{{/* comments */}}` and the `{{-`/`-}}`
//! whitespace trim markers.
//!
//! stretcher's `env` (from kayac/go-config) returns the first argument naming a non-empty variable,
//! else its last argument literally; `must_env` returns a variable that is set (even empty) and
//! panics otherwise. Here an unset `must_env` variable is a clean error instead of a panic.

/// Why a manifest template did not render; names the line and what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("manifest template, line {line}: {problem}")]
pub struct TemplateError {
    pub line: usize,
    pub problem: String,
}

/// The most a manifest may render to: 16 MiB, four times the largest manifest fetched
/// ([`MAX_DOCUMENT_BYTES`](crate::agent::source::MAX_DOCUMENT_BYTES)). `{{ env "BIG" }}` repeated
/// would otherwise multiply a host variable's size by the number of actions.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// Renders `text`, looking variables up with `lookup` (the process environment in the agent).
///
/// One pass over `text`: the line number an error names is counted only when there is an error
/// (counting it for every action made a manifest of 300k actions quadratic: minutes of CPU).
pub fn render(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Set by a `-}}`: whitespace at the start of the next text chunk is dropped.
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let error_at = |problem: String| TemplateError {
            line: line_of(text, rest, open),
            problem,
        };
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start();
        }
        let mut body = &rest[open + 2..];
        // `{{-` trims only when followed by whitespace, as in Go (`{{-3}}` is the number -3).
        if body.starts_with("- ") || body.starts_with("-\t") || body.starts_with("-\n") {
            before = before.trim_end();
            body = &body[1..];
        }
        out.push_str(before);
        let close = body.find("}}").ok_or_else(|| {
            error_at("`{{` is never closed by `}}`: close the action or remove the braces".into())
        })?;
        let mut action = &body[..close];
        trim_next = false;
        if action.ends_with(" -") || action.ends_with("\t-") || action.ends_with("\n-") {
            action = &action[..action.len() - 1];
            trim_next = true;
        }
        out.push_str(&eval(action, lookup).map_err(error_at)?);
        if out.len() > MAX_RENDERED_BYTES {
            return Err(error_at(format!(
                "the manifest renders to more than {} MiB: a manifest is a few hundred bytes of YAML, check what its env actions expand to",
                MAX_RENDERED_BYTES >> 20
            )));
        }
        rest = &body[close + 2..];
    }
    out.push_str(if trim_next { rest.trim_start() } else { rest });
    Ok(out)
}

/// 1-based line number of byte `offset` of `rest`, a suffix of `text`.
fn line_of(text: &str, rest: &str, offset: usize) -> usize {
    let absolute = text.len() - rest.len() + offset;
    text[..absolute].matches('\n').count() + 1
}

fn eval(action: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let trimmed = action.trim();
    if trimmed.starts_with("/*") && trimmed.ends_with("*/") {
        return Ok(String::new());
    }
    let mut words = tokenize(trimmed)?.into_iter();
    let Some(Token::Ident(func)) = words.next() else {
        return Err(format!(
            "unsupported action `{{{{{action}}}}}`: only env and must_env are supported"
        ));
    };
    let args = words
        .map(|t| match t {
            Token::Str(s) => Ok(s),
            Token::Ident(w) => Err(format!(
                "argument `{w}` of {func} is not a quoted string: write \"{w}\""
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    match func.as_str() {
        "env" => {
            let Some(last) = args.last() else {
                return Err("env needs at least one variable name: {{ env \"NAME\" }}".into());
            };
            let found = args
                .iter()
                .find_map(|name| lookup(name).filter(|v| !v.is_empty()));
            Ok(found.unwrap_or_else(|| last.clone()))
        }
        "must_env" => match args.as_slice() {
            [name] => lookup(name).ok_or_else(|| {
                format!("must_env: environment variable {name} is not set: set it for the agent or use env with a default")
            }),
            _ => Err("must_env takes exactly one variable name: {{ must_env \"NAME\" }}".into()),
        },
        other => Err(format!(
            "unknown function {other:?}: only env and must_env are supported"
        )),
    }
}

#[derive(Debug)]
enum Token {
    Ident(String),
    Str(String),
}

/// Splits an action into identifiers and Go string literals ("…" with escapes, or `…` raw).
fn tokenize(action: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(other @ ('"' | '\\')) => s.push(other),
                        other => {
                            return Err(format!("unsupported escape \\{}", other.unwrap_or(' ')))
                        }
                    },
                    Some(ch) => s.push(ch),
                    None => return Err("a quoted string is not closed: add the closing \"".into()),
                }
            }
            tokens.push(Token::Str(s));
        } else if c == '`' {
            chars.next();
            let s: String = chars.by_ref().take_while(|&ch| ch != '`').collect();
            tokens.push(Token::Str(s));
        } else if c.is_alphanumeric() || c == '_' {
            let mut s = String::new();
            while let Some(&ch) = chars.peek() {
                if !(ch.is_alphanumeric() || ch == '_') {
                    break;
                }
                s.push(ch);
                chars.next();
            }
            tokens.push(Token::Ident(s));
        } else {
            return Err(format!(
                "unsupported syntax {c:?} in `{{{{{action}}}}}`: only env and must_env are supported"
            ));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("web1".into()),
            "EMPTY" => Some(String::new()),
            "BIG" => Some("x".repeat(1 << 20)),
            _ => None,
        }
    }

    fn render_ok(text: &str) -> String {
        render(text, &vars).expect("renders")
    }

    #[test]
    fn env_takes_the_first_non_empty_variable_else_the_last_argument() {
        assert_eq!(render_ok(r#"a: {{ env "HOST" }}"#), "a: web1");
        assert_eq!(render_ok(r#"a: {{env "EMPTY" "HOST"}}"#), "a: web1");
        assert_eq!(
            render_ok(r#"a: {{ env "NOPE" "fallback" }}"#),
            "a: fallback"
        );
        // A single unset name renders as itself, exactly as go-config does.
        assert_eq!(render_ok(r#"a: {{ env "NOPE" }}"#), "a: NOPE");
    }

    #[test]
    fn must_env_accepts_empty_and_refuses_unset() {
        assert_eq!(render_ok(r#"a: "{{ must_env "EMPTY" }}""#), r#"a: """#);
        let err = render("x: 1\ny: {{ must_env \"SECRET\" }}", &vars).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().contains("SECRET is not set"), "{err}");
    }

    #[test]
    fn trim_markers_and_comments() {
        assert_eq!(render_ok("a:  {{- env \"HOST\" -}}  \nb"), "a:web1b");
        assert_eq!(render_ok("a{{/* note */}}b"), "ab");
    }

    #[test]
    fn many_actions_render_in_linear_time() {
        // 300k actions (a 4 MiB manifest) took 508 s of CPU when every action counted the lines
        // before it; 50k take milliseconds now, and two minutes (unoptimised) that way.
        let text = "{{env \"HOST\"}}\n".repeat(50_000);
        let start = std::time::Instant::now();
        let out = render(&text, &vars).expect("renders");
        let took = start.elapsed();
        assert_eq!(out.len(), 50_000 * "web1\n".len());
        assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
        // The line is still counted when there is an error to name it in.
        let err = render(&format!("{text}{{{{ nope }}}}"), &vars).unwrap_err();
        assert_eq!(err.line, 50_001);
    }

    #[test]
    fn a_manifest_that_renders_too_large_is_refused() {
        let err = render(&"{{ env \"BIG\" }}\n".repeat(20), &vars).unwrap_err();
        assert_eq!(err.line, 16);
        assert!(err.problem.contains("renders to more than 16 MiB"), "{err}");
    }

    #[test]
    fn unknown_functions_and_unclosed_actions_are_errors() {
        assert!(render("{{ printf \"x\" }}", &vars)
            .unwrap_err()
            .problem
            .contains("unknown function"));
        assert!(render("a: {{ env \"A\"", &vars)
            .unwrap_err()
            .problem
            .contains("never closed"));
    }
}
