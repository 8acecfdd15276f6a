//! The messages: one `Request` variant per verb, one `Response` variant per answer, errors as data.
//!
//! A connection carries one request. Long verbs (deploy, rollback) first stream zero or more
//! `Response::Progress` frames, then exactly one final response.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::app::AppSpec;
use super::canary::Share;

/// Bumped whenever a message changes incompatibly; both sides refuse a different version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The first frame a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The client's name and version, for the supervisor's log (`cutover 0.1.0`).
    pub client: String,
}

/// The supervisor's answer to `Hello`; on a version mismatch `accepted` is false and the
/// connection is closed after it. A peer the supervisor refuses outright (another user) gets a
/// `Response::Error` of kind `Forbidden` in place of this reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    pub protocol: u32,
    pub supervisor: String,
    pub accepted: bool,
}

// One request per connection: the size of the deploy variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    Deploy(DeployRequest),
    Status(StatusRequest),
    Releases(ReleasesRequest),
    Rollback(RollbackRequest),
    Logs(LogsRequest),
    Stop(StopRequest),
    /// Ends a running canary now with a full switch (`cutover promote APP`).
    Promote(CanaryRequest),
    /// Backs a running canary out: weight 0, drain, stop, mark bad (`cutover abort APP`).
    Abort(CanaryRequest),
}

/// Roll out a release that the agent has already placed in `dest/releases/<version>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub app: AppSpec,
    pub version: String,
    /// The app's home (`releases/`, `current`, `shared/`).
    pub dest: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// One app, or all when absent.
    pub app: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasesRequest {
    pub app: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub app: String,
    /// A kept release; absent: the previous good one.
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub app: String,
}

/// The app whose running canary the operator decides on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryRequest {
    pub app: String,
}

/// A decision taken by a running canary; its outcome comes to the deploy's own client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryReply {
    pub app: String,
    pub message: String,
}

/// Stop an app's instances, close its public address and forget it (its files stay on disk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    pub app: String,
}

// The tag is `type`, not `kind`: `ErrorReply` has its own `kind` field, and an internally tagged
// enum whose tag collides with a field writes the key twice and cannot read its own output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// One human-readable step of a rollout in progress.
    Progress(Progress),
    Deployed(DeployOutcome),
    RolledBack(DeployOutcome),
    Status(StatusReport),
    Releases(ReleaseList),
    Logs(LogFiles),
    Stopped(StopOutcome),
    Decided(CanaryReply),
    Error(ErrorReply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub app: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployOutcome {
    pub app: String,
    /// The version now live.
    pub version: String,
    /// The version it replaced, if any.
    pub previous: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub apps: Vec<AppStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub listen: String,
    /// The hosts and path the proxy routes to the app on `listen` (`any host` when it takes
    /// every request there), as `cutover status` shows them.
    #[serde(default)]
    pub routes: String,
    /// The other apps served on the same `listen` address, routed by host and path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares_address_with: Vec<String>,
    pub live_version: Option<String>,
    /// What the app task is doing: `idle`, `deploying 1.4.2: waiting for health`, …
    pub phase: String,
    pub instances: Vec<InstanceStatus>,
    /// The running canary, else the app's last one since the supervisor started: its steps and
    /// the figures it was judged on, over time.
    #[serde(default)]
    pub canary: Option<CanaryStatus>,
    /// How the app's last rollouts ended, oldest first (at most [`RECENT_ROLLOUTS`]).
    #[serde(default)]
    pub recent_rollouts: Vec<RolloutOutcome>,
    /// With `access_log: true`: its file and the lines it could not write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogStatus>,
    /// With `tls.acme`: `acme, valid until …` or `acme, ordering: <the last failure>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// An app's access log as `cutover status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLogStatus {
    pub path: String,
    /// Lines dropped because its writer fell behind (a slow or full disk), since the log opened.
    pub dropped_lines: u64,
    /// Lines lost because a write failed (a full disk, permissions).
    pub lost_lines: u64,
}

/// How many ended rollouts an app keeps for `status` and the dashboard.
pub const RECENT_ROLLOUTS: usize = 10;

/// A canary and the judge's readings of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// The version on trial.
    pub version: String,
    /// False once it ended (promoted, backed out or cut short): kept to show how it went.
    pub running: bool,
    /// The step in progress (or the last one reached), counted from 1, of `steps`.
    pub step: u32,
    pub steps: u32,
    /// The share of new clients its candidates get in that step.
    pub share: Share,
    /// Readings, oldest first: every judgement at first, thinned out (every other one dropped)
    /// each time there are [`CANARY_SAMPLES`], so a long canary keeps its whole run.
    pub samples: Vec<CanarySample>,
}

/// The most readings a [`CanaryStatus`] holds.
pub const CANARY_SAMPLES: usize = 600;

/// Both sides of a canary as the judge saw them at one reading, over the step so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanarySample {
    /// Unix time of the reading, milliseconds.
    pub at_ms: u64,
    /// The step, counted from 1, and its share.
    pub step: u32,
    pub share: Share,
    pub stable: SideFigures,
    pub canary: SideFigures,
}

/// One side's traffic over a canary step so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideFigures {
    pub requests: u64,
    /// 5xx answers, broken exchanges and failed connects.
    pub errors: u64,
    pub error_rate: Share,
    /// p99 latency to the response head; absent until the canary has warmed up in the step.
    pub p99_us: Option<u64>,
}

/// How one rollout of an app ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutOutcome {
    /// `deploy`, `rollback` or `automatic rollback`.
    pub kind: String,
    pub version: String,
    /// The version live when it began.
    pub previous: Option<String>,
    /// RFC 3339 times it began and ended.
    pub began_at: String,
    pub ended_at: String,
    /// Whether `version` went live; if not, `previous` kept serving.
    pub succeeded: bool,
    /// Why it failed.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub version: String,
    pub pid: Option<u32>,
    pub addr: String,
    /// `starting`, `healthy`, `unhealthy`, `draining`, `crashed`, `stopped`.
    pub state: String,
    /// Whether the proxy currently routes new requests to it.
    pub routed: bool,
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// Requests the route sent, and their 5xx and broken exchanges: what a canary is judged on.
    pub requests: u64,
    pub errors_5xx: u64,
    /// Requests the canary header pinned here (testers), counted apart and never judged.
    #[serde(default)]
    pub pinned_requests: u64,
    /// Requests their clients broke off (an aborted or malformed upload, a client too slow):
    /// shown, never held against the instance.
    #[serde(default)]
    pub client_aborts: u64,
    pub in_flight: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseList {
    pub app: String,
    pub releases: Vec<ReleaseInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub version: String,
    pub dir: PathBuf,
    pub state: ReleaseState,
    /// RFC 3339 time it went live, if it ever did.
    pub deployed_at: Option<String>,
    /// Why it is bad, when it is.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Serving traffic now.
    Live,
    /// The release a plain `cutover rollback` would go back to.
    Previous,
    /// Kept on disk, good, not live.
    Kept,
    /// Failed or rolled away from: never picked automatically again.
    Bad,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogFiles {
    pub app: String,
    /// Log files of the app's current and recent instances, newest last.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopOutcome {
    pub app: String,
    /// Instances stopped.
    pub stopped: u32,
}

/// An error travelling as data; the CLI maps `kind` to its exit code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong (bad spec, unknown version to roll back to, …).
    BadRequest,
    /// No such app.
    NotFound,
    /// Another rollout of this app is in progress.
    Busy,
    /// The rollout failed; the previous release keeps serving.
    DeployFailed,
    /// Client and supervisor speak different protocol versions.
    ProtocolMismatch,
    /// A fault inside the supervisor.
    Internal,
    /// The peer may not use this supervisor (another user than its owner or root).
    Forbidden,
}

impl ErrorKind {
    /// Exit code of a CLI verb that ends with this error.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::DeployFailed => 1,
            ErrorKind::BadRequest => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Busy => 4,
            ErrorKind::ProtocolMismatch => 5,
            ErrorKind::Internal => 6,
            ErrorKind::Forbidden => 7,
        }
    }
}
