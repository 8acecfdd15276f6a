//! ACME Renewal Information (RFC 9773): asking the CA when a certificate should be renewed. The
//! time is drawn at random inside the window it suggests (so a fleet's renewals spread out), a
//! window already open means now, and the CA's Retry-After says when to ask again (kept between
//! a minute and a day). A CA without ARI is told apart, so the caller falls back to its rule.

use std::time::{Duration, SystemTime};

use instant_acme::{Account, CertificateIdentifier};
use rustls::pki_types::CertificateDer;

/// The shortest and longest wait before asking again, whatever the CA says.
const ASK_MIN: Duration = Duration::from_secs(60);
const ASK_MAX: Duration = Duration::from_secs(24 * 3600);

/// The CA's answer for one certificate.
#[derive(Debug)]
pub enum Asked {
    Suggested(Suggestion),
    /// The directory offers no ARI.
    Unsupported,
    Failed(String),
}

/// When to renew a certificate, by its CA.
#[derive(Debug, Clone)]
pub struct Suggestion {
    /// The moment picked in the window.
    pub renew_at: SystemTime,
    /// The certificate's ARI name, for the order that replaces it.
    pub replaces: CertificateIdentifier<'static>,
    pub ask_again: Duration,
    /// Why the window is where it is, when the CA says (a revocation, say).
    pub explanation: Option<String>,
}

/// Asks `account`'s CA when to renew `leaf`.
pub async fn ask(account: &Account, leaf: &CertificateDer<'_>) -> Asked {
    let id = match CertificateIdentifier::try_from(leaf) {
        Ok(id) => id.into_owned(),
        Err(why) => return Asked::Failed(format!("the certificate has no ARI name: {why}")),
    };
    match account.renewal_info(&id).await {
        Ok((info, retry)) => {
            let window = &info.suggested_window;
            Asked::Suggested(Suggestion {
                renew_at: pick(window.start.into(), window.end.into(), rand::random()),
                replaces: id,
                ask_again: retry.clamp(ASK_MIN, ASK_MAX),
                explanation: info.explanation_url,
            })
        }
        Err(instant_acme::Error::Unsupported(_)) => Asked::Unsupported,
        Err(e) => Asked::Failed(format!("asking the CA when to renew: {e}")),
    }
}

/// The point `fraction` (0 to 1) of the way through the window from `start` to `end`.
fn pick(start: SystemTime, end: SystemTime, fraction: f64) -> SystemTime {
    match end.duration_since(start) {
        Ok(span) => start + span.mul_f64(fraction.clamp(0.0, 1.0)),
        Err(_) => start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renewal_time_falls_inside_the_window() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let end = start + Duration::from_secs(100);
        assert_eq!(pick(start, end, 0.0), start);
        assert_eq!(pick(start, end, 0.5), start + Duration::from_secs(50));
        assert_eq!(pick(start, end, 1.0), end);
        // A window the wrong way round means its start.
        assert_eq!(pick(end, start, 0.5), end);
    }
}
