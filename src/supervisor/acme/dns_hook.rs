//! DNS-01 through the operator's hook: the command that publishes a challenge's TXT record
//! (`HOOK present _acme-challenge.<name>. <value>`) and takes it away again (`HOOK cleanup`, same
//! arguments; also in `CUTOVER_ACME_ACTION`, `_RECORD`, `_VALUE`). Each run is bounded, its
//! failure said with the hook's last line of stderr, and a published record is cleaned up even
//! when the order is dropped halfway.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long one run of the hook may take (a DNS provider's API, not the spread of the record).
const HOOK_DEADLINE: Duration = Duration::from_secs(120);

/// A TXT record the hook published; cleaned up by [`Published::cleanup`], or on drop.
#[derive(Debug)]
pub struct Published {
    hook: PathBuf,
    record: String,
    value: String,
    cleaned: bool,
}

/// The TXT record name DNS-01 checks for `name` (a wildcard's is its base name's).
pub fn record_name(name: &str) -> String {
    format!("_acme-challenge.{}.", name.trim_end_matches('.'))
}

/// Runs `hook present record value`.
pub async fn present(hook: &Path, record: &str, value: &str) -> Result<Published, String> {
    run(hook, "present", record, value).await?;
    Ok(Published {
        hook: hook.to_owned(),
        record: record.to_owned(),
        value: value.to_owned(),
        cleaned: false,
    })
}

impl Published {
    /// Runs `hook cleanup record value`; a failure is logged (the record only lingers).
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        cleanup(&self.hook, &self.record, &self.value).await;
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (hook, record, value) = (
            std::mem::take(&mut self.hook),
            std::mem::take(&mut self.record),
            std::mem::take(&mut self.value),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { cleanup(&hook, &record, &value).await });
        }
    }
}

async fn cleanup(hook: &Path, record: &str, value: &str) {
    if let Err(why) = run(hook, "cleanup", record, value).await {
        tracing::warn!("{why}; the TXT record {record} may be left behind");
    }
}

/// One run of the hook; an error names the hook, the action and why.
async fn run(hook: &Path, action: &str, record: &str, value: &str) -> Result<(), String> {
    let said = format!("the dns hook `{} {action} {record}`", hook.display());
    let child = tokio::process::Command::new(hook)
        .args([action, record, value])
        .env("CUTOVER_ACME_ACTION", action)
        .env("CUTOVER_ACME_RECORD", record)
        .env("CUTOVER_ACME_VALUE", value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {said}: {e}; check tls.acme.dns_hook"))?;
    let output = tokio::time::timeout(HOOK_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{said} did not finish in {} s and was killed",
                HOOK_DEADLINE.as_secs()
            )
        })?
        .map_err(|e| format!("{said}: {e}"))?;
    if output.status.success() {
        tracing::debug!("{said} done");
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    Err(match last {
        Some(line) => format!("{said} failed ({}): {}", output.status, line.trim()),
        None => format!("{said} failed ({}) and said nothing", output.status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_under_acme_challenge_with_a_trailing_dot() {
        assert_eq!(
            record_name("shop.example.com"),
            "_acme-challenge.shop.example.com."
        );
        assert_eq!(record_name("example.com."), "_acme-challenge.example.com.");
    }
}
