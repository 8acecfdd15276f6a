//! What triggered a run: the manifest URL from stdin as a plain line, a `consul watch -type event`
//! JSON array or a `serf agent -event-handler` user event, and the event's identity for replay
//! protection.
//!
//! Parsing is pure (bytes and an environment snapshot in, an [`Event`] out) so every format is unit
//! tested without a process; reading stdin is bounded because a watch handler must never buffer an
//! unbounded stream into memory.

use std::io::Read;

use base64::Engine;
use serde::Deserialize;

/// Most bytes read from stdin. A Consul watch hands over at most its buffer of 256 events of a few
/// hundred bytes each; anything far larger is not an event.
pub const MAX_STDIN: u64 = 4 << 20;

/// A manifest URL and, for Consul and Serf, the identity of the event that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub url: String,
    /// `None` for a plain line: it has no identity, so it is never skipped as a replay.
    pub identity: Option<EventId>,
}

/// Who sent an event and where it stands in that sender's Lamport clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub source: EventSource,
    /// The event name (`consul event -name deploy`, `serf event deploy`).
    pub name: String,
    /// Consul's event ID (a UUID); Serf user events have none.
    pub id: Option<String>,
    /// Lamport time: later events of one name have a larger value.
    pub ltime: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Consul,
    Serf,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Consul => "consul",
            EventSource::Serf => "serf",
        }
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} event {:?}", self.source.as_str(), self.name)?;
        if let Some(id) = &self.id {
            write!(f, " (ID {id}, LTime {})", self.ltime)
        } else {
            write!(f, " (LTime {})", self.ltime)
        }
    }
}

/// What the environment says about how the agent was started (the variables Consul and Serf set).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub consul_index: Option<String>,
    pub serf_event: Option<String>,
    pub serf_user_event: Option<String>,
    pub serf_user_ltime: Option<String>,
}

impl Env {
    /// Snapshot of the process environment.
    pub fn from_process() -> Env {
        let var = |name: &str| std::env::var(name).ok();
        Env {
            consul_index: var("CONSUL_INDEX"),
            serf_event: var("SERF_EVENT"),
            serf_user_event: var("SERF_USER_EVENT"),
            serf_user_ltime: var("SERF_USER_LTIME"),
        }
    }
}

/// The result of reading stdin: something to deploy, or a Serf event that is not for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Deploy(Event),
    /// A Serf membership event (`member-join`, …) handed to a catch-all handler: nothing to do.
    NotUserEvent(String),
}

/// Why stdin did not hold an event; one line that says what to send instead.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("could not parse event: stdin is empty: send a manifest URL, e.g. `echo s3://bucket/manifest.yml | cutover`")]
    Empty,
    #[error("could not read stdin: {0}")]
    Read(#[source] std::io::Error),
    #[error("could not parse event: stdin is larger than {MAX_STDIN} bytes: send one manifest URL or one Consul event array")]
    TooLarge,
    #[error("could not parse Consul event: {0}: expected the JSON array `consul watch -type event` writes")]
    ConsulJson(String),
    #[error("no Consul events found: the watch handed over an empty array")]
    NoConsulEvents,
    #[error("could not parse Consul event {id}: Payload is not base64: {reason}")]
    ConsulPayload { id: String, reason: String },
    #[error("Consul event {0} has no payload: send the manifest URL as the payload (`consul event -name deploy URL`)")]
    ConsulNoPayload(String),
    #[error("Serf user event has an invalid SERF_USER_LTIME {0:?}: expected a number")]
    SerfLtime(String),
    #[error("could not parse event: the manifest URL is empty: send a URL on the first line")]
    EmptyUrl,
    #[error("could not parse event: the manifest URL is not UTF-8")]
    NotUtf8,
}

/// Reads at most [`MAX_STDIN`] bytes of `reader` (the agent's stdin).
pub fn read_bounded(reader: impl Read) -> Result<Vec<u8>, InputError> {
    let mut buf = Vec::new();
    reader
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .map_err(InputError::Read)?;
    if buf.len() as u64 > MAX_STDIN {
        return Err(InputError::TooLarge);
    }
    Ok(buf)
}

/// Turns stdin's bytes into the event to deploy, following how Consul, Serf and `echo URL |`
/// invoke a handler.
pub fn parse(stdin: &[u8], env: &Env) -> Result<Input, InputError> {
    if let Some(kind) = &env.serf_event {
        if kind != "user" {
            return Ok(Input::NotUserEvent(kind.clone()));
        }
        return parse_serf(stdin, env).map(Input::Deploy);
    }
    let first = stdin.iter().find(|b| !b.is_ascii_whitespace());
    if env.consul_index.is_some() || first == Some(&b'[') {
        return parse_consul(stdin).map(Input::Deploy);
    }
    Ok(Input::Deploy(Event {
        url: first_line(stdin)?,
        identity: None,
    }))
}

/// One element of the array `consul watch -type event` writes on the handler's stdin.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConsulEvent {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    payload: Option<String>,
    #[serde(rename = "LTime", default)]
    ltime: u64,
}

fn parse_consul(stdin: &[u8]) -> Result<Event, InputError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(InputError::Empty);
    }
    let events: Vec<ConsulEvent> =
        serde_json::from_slice(stdin).map_err(|e| InputError::ConsulJson(e.to_string()))?;
    // A watch hands over its whole buffer; the newest event is the last one.
    let event = events
        .into_iter()
        .last()
        .ok_or(InputError::NoConsulEvents)?;
    let payload = event
        .payload
        .ok_or_else(|| InputError::ConsulNoPayload(event.id.clone()))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| InputError::ConsulPayload {
            id: event.id.clone(),
            reason: e.to_string(),
        })?;
    Ok(Event {
        url: first_line(&decoded)?,
        identity: Some(EventId {
            source: EventSource::Consul,
            name: event.name,
            id: Some(event.id),
            ltime: event.ltime,
        }),
    })
}

fn parse_serf(stdin: &[u8], env: &Env) -> Result<Event, InputError> {
    let name = env.serf_user_event.clone().unwrap_or_default();
    let identity = match env.serf_user_ltime.as_deref().map(str::trim) {
        Some(raw) => Some(EventId {
            source: EventSource::Serf,
            name,
            id: None,
            ltime: raw
                .parse()
                .map_err(|_| InputError::SerfLtime(raw.to_owned()))?,
        }),
        // Without a Lamport time there is nothing to compare against: treat it like a plain line.
        None => None,
    };
    Ok(Event {
        url: first_line(stdin)?,
        identity,
    })
}

/// The first line, trimmed of surrounding whitespace and a trailing `\r` (stretcher keeps them and
/// then fails to fetch the URL).
fn first_line(bytes: &[u8]) -> Result<String, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| InputError::NotUtf8)?;
    let line = text.trim_start().lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(if text.trim().is_empty() {
            InputError::Empty
        } else {
            InputError::EmptyUrl
        });
    }
    Ok(line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(stdin: &[u8], env: &Env) -> Event {
        match parse(stdin, env).expect("parses") {
            Input::Deploy(event) => event,
            other => panic!("expected a deploy, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_line_is_trimmed_of_whitespace_and_cr() {
        let event = deploy(b"  s3://b/m.yml \r\nsecond line\n", &Env::default());
        assert_eq!(event.url, "s3://b/m.yml");
        assert_eq!(event.identity, None);
        assert_eq!(
            deploy(b"file:///m.yml", &Env::default()).url,
            "file:///m.yml"
        );
    }

    #[test]
    fn empty_stdin_is_an_error() {
        assert!(matches!(
            parse(b"", &Env::default()),
            Err(InputError::Empty)
        ));
        assert!(matches!(
            parse(b" \n", &Env::default()),
            Err(InputError::Empty)
        ));
    }

    #[test]
    fn the_last_consul_event_wins() {
        let json = br#"[
          {"ID":"a","Name":"deploy","Payload":"czM6Ly9iL29sZC55bWw=","LTime":3},
          {"ID":"b","Name":"deploy","Payload":"czM6Ly9iL25ldy55bWw=","LTime":4}
        ]"#;
        let event = deploy(json, &Env::default());
        assert_eq!(event.url, "s3://b/new.yml");
        let id = event.identity.expect("consul events have an identity");
        assert_eq!((id.id.as_deref(), id.ltime), (Some("b"), 4));
    }

    #[test]
    fn consul_index_forces_json_and_an_empty_array_is_an_error() {
        let env = Env {
            consul_index: Some("7".into()),
            ..Env::default()
        };
        let err = parse(b"[]\n", &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no Consul events found: the watch handed over an empty array"
        );
        assert!(matches!(
            parse(b"not json", &env),
            Err(InputError::ConsulJson(_))
        ));
    }

    #[test]
    fn a_null_consul_payload_is_an_error() {
        let json = br#"[{"ID":"x","Name":"deploy","Payload":null,"LTime":1}]"#;
        assert!(matches!(
            parse(json, &Env::default()),
            Err(InputError::ConsulNoPayload(_))
        ));
    }

    #[test]
    fn serf_user_events_carry_name_and_ltime() {
        let env = Env {
            serf_event: Some("user".into()),
            serf_user_event: Some("deploy".into()),
            serf_user_ltime: Some("42".into()),
            ..Env::default()
        };
        let event = deploy(b"s3://b/m.yml\n", &env);
        let id = event.identity.expect("serf events have an identity");
        assert_eq!(
            (id.name.as_str(), id.ltime, id.source),
            ("deploy", 42, EventSource::Serf)
        );
    }

    #[test]
    fn serf_membership_events_are_not_deploys() {
        let env = Env {
            serf_event: Some("member-join".into()),
            ..Env::default()
        };
        let input = parse(b"node1 10.0.0.1\n", &env).expect("parses");
        assert_eq!(input, Input::NotUserEvent("member-join".into()));
    }

    #[test]
    fn stdin_over_the_bound_is_refused() {
        let big = std::io::repeat(b'a').take(MAX_STDIN + 10);
        assert!(matches!(read_bounded(big), Err(InputError::TooLarge)));
    }
}
