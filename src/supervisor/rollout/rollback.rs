//! Which release a rollback goes back to, and marking releases bad.
//!
//! The rollback itself is an ordinary health-gated blue-green rollout (`deploy::run` with a
//! rollback `RolloutKind`): the release it leaves is marked bad only once the target is live, so a
//! failed rollback leaves everything as it was. Automatic rollbacks happen in two places:
//! a new release that never gets healthy (or crashes at boot) is stopped before the switch and
//! marked bad; a live release that crash-loops after its switch is rolled back to the previous
//! good release still on disk (see `AppTask::on_live_crash_loop`).

use crate::protocol::{layout, AppSpec, ErrorKind, ErrorReply};
use crate::supervisor::store::AppRecord;

use super::releases;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::store::ReleaseRecord;

    fn record(dest: &std::path::Path) -> AppRecord {
        let spec: AppSpec = serde_json::from_value(serde_json::json!({
            "name": "shop", "run": "true", "listen": "127.0.0.1:1"
        }))
        .expect("spec");
        let release = |bad: Option<&str>| ReleaseRecord {
            spec: spec.clone(),
            deployed_at: None,
            bad: bad.map(str::to_owned),
        };
        for v in ["v1", "v2", "v3"] {
            std::fs::create_dir_all(layout::release_dir(dest, v)).expect("mkdir");
        }
        AppRecord {
            spec: spec.clone(),
            dest: dest.to_owned(),
            live: Some("v3".into()),
            releases: [
                ("v1".to_owned(), release(None)),
                ("v2".to_owned(), release(Some("crash loop"))),
                ("v3".to_owned(), release(None)),
            ]
            .into(),
            history: vec!["v1".into(), "v2".into(), "v3".into()],
            instances: vec![],
            deploy: None,
            next_instance: 0,
            rollouts: Vec::new(),
        }
    }

    #[test]
    fn the_previous_good_release_skips_bad_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (target, _) = choose(&record(dir.path()), None).expect("a target");
        assert_eq!(target, "v1");
    }

    #[test]
    fn bad_missing_live_and_unknown_targets_are_bad_requests() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rec = record(dir.path());
        for (version, words) in [
            ("v2", "marked bad (crash loop)"),
            ("v3", "already live"),
            ("v9", "never ran"),
        ] {
            let e = choose(&rec, Some(version)).expect_err(version);
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains(words), "{version}: {}", e.message);
        }
        std::fs::remove_dir(layout::release_dir(dir.path(), "v1")).expect("rmdir");
        let e = choose(&rec, Some("v1")).expect_err("v1 is gone");
        assert!(e.message.contains("no longer on disk"), "{}", e.message);
        let e = choose(&rec, None).expect_err("nothing good is left");
        assert!(
            e.message.contains("no previous good release"),
            "{}",
            e.message
        );
    }
}
