//! What travels in Serf queries between a coordinator and a node's handler: query names, payloads
//! and the compact JSON answers, each fitted into Serf's 1 KiB response limit.
//!
//! Both sides of a query are cutover, so this module is their contract, like `protocol` is the
//! agent↔supervisor one. Field names are short on purpose: 1 KiB is little.

use serde::{Deserialize, Serialize};

/// Serf refuses a query response larger than this (`QueryResponseSizeLimit`).
pub const MAX_ANSWER: usize = 1024;

/// Ask a node to deploy the manifest URL in the payload; it answers at once and works detached.
pub const QUERY_DEPLOY: &str = "cutover-deploy";
/// Ask a node to stage the manifest URL in the payload (`cutover apply --stage-only URL`):
/// download, verify and unpack it without switching; answered at once, works detached.
pub const QUERY_STAGE: &str = "cutover-stage";
/// Ask a node what it runs: apps, live versions, health and its last fleet deploy.
pub const QUERY_STATUS: &str = "cutover-status";
/// Ask a node to roll an app back: payload `APP` or `APP VERSION`; answered at once, works detached.
pub const QUERY_ROLLBACK: &str = "cutover-rollback";
/// Ask a node for the manifest URL it last deployed an app from: payload `APP`.
pub const QUERY_MANIFEST: &str = "cutover-manifest";

/// The word a coordinator appends to a deploy or rollback payload to name its run
/// (`URL run=ID`, `APP VERSION run=ID`): every copy of the query it sends carries the same one, so
/// a node that got an earlier copy answers "accepted" instead of starting the work again.
pub const RUN_PREFIX: &str = "run=";

/// `payload` with the coordinator's run id appended.
pub fn with_run(payload: &str, id: &str) -> String {
    format!("{payload} {RUN_PREFIX}{id}")
}

/// Splits a payload into what it asks for and its run id, if it carries one (payloads typed by
/// hand with `serf query` usually do not).
pub fn split_run(payload: &str) -> (String, Option<&str>) {
    let mut id = None;
    let words: Vec<&str> = payload
        .split_whitespace()
        .filter(|word| match word.strip_prefix(RUN_PREFIX) {
            Some(run) => {
                id = Some(run);
                false
            }
            None => true,
        })
        .collect();
    (words.join(" "), id)
}

/// A node's short answer to a deploy, rollback or manifest query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
    /// `accepted`, or what went wrong.
    pub msg: String,
    /// For a manifest query: the URL and the version it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
}

impl Ack {
    /// A refusal because the node is still busy with another run (worth asking again).
    pub fn is_busy(&self) -> bool {
        !self.ok && self.msg.starts_with("busy")
    }

    pub fn accepted() -> Ack {
        Ack {
            ok: true,
            msg: "accepted".to_owned(),
            url: None,
            v: None,
        }
    }

    pub fn refused(msg: impl Into<String>) -> Ack {
        Ack {
            ok: false,
            msg: msg.into(),
            url: None,
            v: None,
        }
    }
}

/// A node's answer to a status query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    #[serde(default)]
    pub apps: Vec<AppState>,
    /// The last deploy, stage or rollback the node's handler ran, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastRun>,
    /// Why the supervisor's status could not be read (the rest may still be useful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    /// Apps left out to stay under 1 KiB.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl NodeState {
    pub fn app(&self, name: &str) -> Option<&AppState> {
        self.apps.iter().find(|a| a.n == name)
    }
}

/// One app on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    pub n: String,
    /// Live version, if the app has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
    /// Healthy routed instances of the live version.
    pub ok: u32,
    /// Instances of the live version.
    pub of: u32,
    /// The supervisor's phase (`idle`, `deploying 1.4.2: …`).
    pub p: String,
}

impl AppState {
    /// Runs `version` and serves it from at least one healthy instance.
    pub fn serves(&self, version: &str) -> bool {
        self.v.as_deref() == Some(version) && self.ok > 0
    }
}

/// The handler's record of the last deploy or rollback it started on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// `deploy`, `stage` or `rollback`.
    pub op: String,
    pub app: String,
    pub v: String,
    /// `running`, `ok` or `failed`.
    pub s: RunState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub m: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Ok,
    Failed,
}

/// Serialises `value` as compact JSON no longer than `MAX_ANSWER` bytes.
pub fn ack_json(ack: &Ack) -> String {
    let mut ack = ack.clone();
    loop {
        let text = to_json(&ack);
        if text.len() <= MAX_ANSWER || ack.msg.is_empty() {
            return text;
        }
        // Messages are the only unbounded part of an ack: cut them, keeping a visible marker.
        let keep = ack.msg.len().saturating_sub(text.len() - MAX_ANSWER + 8);
        ack.msg = truncate(&ack.msg, keep);
        if ack.url.as_ref().is_some_and(|u| u.len() > MAX_ANSWER / 2) {
            ack.url = None;
            ack.ok = false;
            ack.msg = "manifest URL too long for a Serf answer".to_owned();
        }
    }
}

/// Serialises a node's state within `MAX_ANSWER` bytes: long messages are cut first, then apps
/// are left out (counted in `more`) from the end.
pub fn state_json(state: &NodeState) -> String {
    let mut state = state.clone();
    let text = to_json(&state);
    if text.len() <= MAX_ANSWER {
        return text;
    }
    for message in state
        .err
        .iter_mut()
        .chain(state.last.iter_mut().map(|l| &mut l.m))
    {
        *message = truncate(message, 120);
    }
    for app in &mut state.apps {
        app.p = truncate(&app.p, 60);
    }
    loop {
        let text = to_json(&state);
        if text.len() <= MAX_ANSWER || state.apps.is_empty() {
            return text;
        }
        state.apps.pop();
        state.more += 1;
    }
}

/// `text` cut to at most `max` bytes on a char boundary, with `…` marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers always serialise.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(i: usize) -> AppState {
        AppState {
            n: format!("app-with-a-long-name-{i}"),
            v: Some("1.4.2-rc.1+build.20261122".to_owned()),
            ok: 2,
            of: 2,
            p: "deploying 1.4.3: waiting for health (1/2 healthy)".to_owned(),
        }
    }

    #[test]
    fn small_state_is_sent_whole() {
        let state = NodeState {
            apps: vec![app(1)],
            ..NodeState::default()
        };
        let text = state_json(&state);
        assert_eq!(serde_json::from_str::<NodeState>(&text).unwrap(), state);
    }

    #[test]
    fn many_apps_are_cut_to_one_kib_and_counted() {
        let state = NodeState {
            apps: (0..40).map(app).collect(),
            last: Some(LastRun {
                op: "deploy".to_owned(),
                app: "shop".to_owned(),
                v: "1".to_owned(),
                s: RunState::Failed,
                m: "x".repeat(3000),
            }),
            err: None,
            more: 0,
        };
        let text = state_json(&state);
        assert!(text.len() <= MAX_ANSWER, "{} bytes", text.len());
        let back: NodeState = serde_json::from_str(&text).unwrap();
        assert_eq!(back.apps.len() + back.more, 40);
        assert!(back.more > 0);
        assert!(back.last.unwrap().m.ends_with('…'));
    }

    #[test]
    fn long_ack_message_is_truncated_with_a_marker() {
        let ack = Ack::refused("é".repeat(2000));
        let text = ack_json(&ack);
        assert!(text.len() <= MAX_ANSWER, "{} bytes", text.len());
        let back: Ack = serde_json::from_str(&text).unwrap();
        assert!(back.msg.ends_with('…'));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 5), "h…");
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn a_run_id_travels_beside_the_payload() {
        let sent = with_run("file:///m.yml", "1f2e");
        assert_eq!(sent, "file:///m.yml run=1f2e");
        assert_eq!(split_run(&sent), ("file:///m.yml".to_owned(), Some("1f2e")));
        assert_eq!(split_run("shop 3"), ("shop 3".to_owned(), None));
        assert_eq!(
            split_run(&with_run("shop 3", "9")),
            ("shop 3".to_owned(), Some("9"))
        );
    }
}
