//! Which release a rollback goes back to, and marking releases bad.
//!
//! The rollback itself is an ordinary health-gated blue-green rollout (`deploy::run` with a
//! rollback `Kind`): the release it leaves is marked bad only once the target is live, so a
//! failed rollback leaves everything as it was. Automatic rollbacks happen in two places:
//! a new release that never gets healthy (or crashes at boot) is stopped before the switch and
//! marked bad; a live release that crash-loops after its switch is rolled back to the previous
//! good release still on disk (see `AppTask::on_live_crash_loop`).

use crate::protocol::{layout, AppSpec, ErrorKind, ErrorReply};
use crate::supervisor::releases;
use crate::supervisor::store::AppRecord;

/// The release to roll back to (`version`, or the previous good one) and its spec.
pub fn choose(record: &AppRecord, version: Option<&str>) -> Result<(String, AppSpec), ErrorReply> {
    let bad = |message: String| ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    };
    let name = &record.spec.name;
    let target = match version {
        Some(v) => v.to_owned(),
        None => releases::rollback_target(record).ok_or_else(|| {
            bad(format!(
                "{name} has no previous good release on disk to roll back to; \
                 `cutover releases {name}` lists what is kept"
            ))
        })?,
    };
    if record.live.as_deref() == Some(target.as_str()) {
        return Err(bad(format!("{target} is already live for {name}")));
    }
    let Some(release) = record.releases.get(&target) else {
        return Err(bad(format!(
            "{name} never ran a release {target}; `cutover releases {name}` lists what is kept"
        )));
    };
    if let Some(reason) = &release.bad {
        return Err(bad(format!(
            "release {target} of {name} is marked bad ({reason}); pick another one"
        )));
    }
    let dir = layout::release_dir(&record.dest, &target);
    if !dir.is_dir() {
        return Err(bad(format!(
            "release {target} of {name} is no longer on disk at {}; deploy it again",
            dir.display()
        )));
    }
    Ok((target, release.spec.clone()))
}

/// Marks `version` bad so that neither a rollback nor a replayed deploy picks it again.
pub fn mark_bad(record: &mut AppRecord, version: &str, reason: &str) {
    if let Some(release) = record.releases.get_mut(version) {
        tracing::warn!(app = %record.spec.name, "release {version} marked bad: {reason}");
        release.bad = Some(reason.to_owned());
    }
}
