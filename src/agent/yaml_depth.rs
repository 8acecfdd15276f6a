//! How deeply a YAML document nests, as libyaml itself sees it, given up on past a limit.
//!
//! libyaml's scanner looks at every open flow collection for every token it reads, so a
//! manifest of `{a: {a: {a: …` 100,000 deep took minutes of CPU before serde_norway (which loads
//! the whole event stream first) could refuse it at its own recursion limit. Counting brackets
//! in the text cannot be trusted (quotes and comments hide some of them, and telling where a
//! quote starts is the scanner's job), so this pass drives the same parser event by event and
//! stops at the first collection past the limit, before the cost grows. Syntax errors are left
//! to serde_norway, whose messages carry more context.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use unsafe_libyaml_norway as unsafe_yaml;

/// Deeper than this, a manifest is refused: real ones nest four or five levels.
pub const MAX_DEPTH: usize = 64;

/// `Err(line)` (1-based) of the first collection nested deeper than `limit` in `text`.
pub fn check(text: &str, limit: usize) -> Result<(), u64> {
    let Some(mut parser) = Parser::new(text) else {
        return Ok(());
    };
    let mut depth = 0usize;
    while let Some((kind, line)) = parser.next() {
        match kind {
            unsafe_yaml::YAML_SEQUENCE_START_EVENT | unsafe_yaml::YAML_MAPPING_START_EVENT => {
                depth += 1;
                if depth > limit {
                    return Err(line + 1);
                }
            }
            unsafe_yaml::YAML_SEQUENCE_END_EVENT | unsafe_yaml::YAML_MAPPING_END_EVENT => {
                depth = depth.saturating_sub(1);
            }
            // After its end (or an error) libyaml only hands out empty events.
            unsafe_yaml::YAML_STREAM_END_EVENT | unsafe_yaml::YAML_NO_EVENT => break,
            _ => {}
        }
    }
    Ok(())
}

/// A libyaml parser reading `text`; freed on drop.
struct Parser<'a> {
    /// Boxed so that it never moves while libyaml holds it.
    sys: Box<MaybeUninit<unsafe_yaml::yaml_parser_t>>,
    /// libyaml reads the text in place: it must outlive the parser.
    text: PhantomData<&'a str>,
}

impl<'a> Parser<'a> {
    /// `None` only when libyaml cannot allocate its buffers.
    fn new(text: &'a str) -> Option<Parser<'a>> {
        let mut sys = Box::new(MaybeUninit::<unsafe_yaml::yaml_parser_t>::uninit());
        // SAFETY: `sys` is a valid place for a parser, initialised here before any other use;
        // the input is `text`, borrowed for the parser's lifetime `'a`.
        unsafe {
            let parser = sys.as_mut_ptr();
            if unsafe_yaml::yaml_parser_initialize(parser).fail {
                return None;
            }
            unsafe_yaml::yaml_parser_set_encoding(parser, unsafe_yaml::YAML_UTF8_ENCODING);
            unsafe_yaml::yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as u64);
        }
        Some(Parser {
            sys,
            text: PhantomData,
        })
    }

    /// The next event's kind and 0-based line; `None` at a syntax error (which is not called
    /// again: after one, libyaml answers with empty events).
    fn next(&mut self) -> Option<(unsafe_yaml::yaml_event_type_t, u64)> {
        let mut event = MaybeUninit::<unsafe_yaml::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised in `new`; an event that `yaml_parser_parse` filled
        // in is read, then freed once, and an event it failed to fill in is not touched.
        unsafe {
            let parser = self.sys.as_mut_ptr();
            let event = event.as_mut_ptr();
            if unsafe_yaml::yaml_parser_parse(parser, event).fail {
                return None;
            }
            let found = ((*event).type_, (*event).start_mark.line);
            unsafe_yaml::yaml_event_delete(event);
            Some(found)
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` (a parser that failed to initialise is never built).
        unsafe { unsafe_yaml::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_flow_and_block_collections_as_the_parser_sees_them() {
        // The document's own mapping, `{b: …}` and `[1, 2]`: three levels.
        assert_eq!(check("a: {b: [1, 2]}\n", 3), Ok(()));
        assert_eq!(check("a: {b: [1, 2]}\n", 2), Err(1));
        assert_eq!(check("a:\n  b:\n    - 1\n", 2), Err(3));
        // Brackets in quotes and comments are text, not collections.
        assert_eq!(check("a: \"[[[[\" # {{{{\n", 1), Ok(()));
    }

    #[test]
    fn syntax_errors_are_left_to_serde() {
        assert_eq!(check("a: [\n", 64), Ok(()));
    }

    #[test]
    fn a_hundred_thousand_nested_mappings_are_refused_at_once() {
        // 100k deep took minutes of CPU in serde_norway alone.
        let deep = format!("a: {}1{}\n", "{a: ".repeat(100_000), "}".repeat(100_000));
        let start = std::time::Instant::now();
        assert_eq!(check(&deep, MAX_DEPTH), Err(1));
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    }
}
