//! What the proxy speaks to an app's instances (`upstream:`), and for `upstream: h2` the trust it
//! gives them (`upstream_tls:`): the CA their certificates must chain to and the name they must
//! be for. There is no way to turn verification off: an instance whose certificate does not
//! check out is never healthy and never gets a request.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The protocol the proxy speaks to an app's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upstream {
    /// HTTP/1.1, connections kept alive and pooled.
    #[default]
    Http1,
    /// HTTP/2 without TLS (prior knowledge): one multiplexed connection per instance and proxy
    /// worker. Health checks with a `path` speak it too.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`, nothing else), the instances' certificates verified as
    /// `upstream_tls` says; otherwise as `h2c`.
    H2,
}

impl Upstream {
    pub fn is_http1(&self) -> bool {
        *self == Upstream::Http1
    }

    /// Whether requests go over HTTP/2 (`h2c` or `h2`).
    pub fn is_http2(&self) -> bool {
        !self.is_http1()
    }
}

/// `upstream_tls: { ca, server_name }`: how the instances of an `upstream: h2` app prove who
/// they are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// The CA certificates (PEM, an absolute path read by the supervisor) the instances'
    /// certificates must chain to, and the only ones trusted. Absent: the public web roots
    /// (webpki-roots), for instances holding a public certificate for `server_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The name sent by SNI that the instances' certificate must be valid for (a DNS name or an
    /// IP address); `localhost` unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The name an instance's certificate must be for when `upstream_tls.server_name` is not set.
pub const DEFAULT_SERVER_NAME: &str = "localhost";

impl UpstreamTlsSpec {
    /// The name the instances' certificate must be valid for.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(DEFAULT_SERVER_NAME)
    }
}

/// What is wrong with `upstream` and `upstream_tls` of `app`, in one line naming the key and the
/// fix.
pub fn check(app: &str, upstream: Upstream, tls: Option<&UpstreamTlsSpec>) -> Result<(), String> {
    let Some(tls) = tls else {
        if upstream == Upstream::H2 {
            return Err(format!(
                "upstream: h2 of {app} needs upstream_tls to verify its instances; give upstream_tls: {{ ca: /etc/cutover/{app}-ca.pem }} (the CA that signed their certificates), or use upstream: h2c"
            ));
        }
        return Ok(());
    };
    if upstream != Upstream::H2 {
        return Err(format!(
            "upstream_tls of {app} is for upstream: h2; remove it or set upstream: h2"
        ));
    }
    if let Some(ca) = &tls.ca {
        if !ca.is_absolute() {
            return Err(format!(
                "upstream_tls.ca of {app} ({}) is not an absolute path; the supervisor reads it, so write it like /etc/cutover/{app}-ca.pem",
                ca.display()
            ));
        }
    }
    let name = tls.server_name();
    if rustls::pki_types::ServerName::try_from(name).is_err() {
        return Err(format!(
            "upstream_tls.server_name of {app} ({name:?}) is not a DNS name or an IP address; write the name the instances' certificate is for, such as localhost"
        ));
    }
    if tls.ca.is_none() && tls.server_name.is_none() {
        return Err(format!(
            "upstream_tls of {app} trusts the public roots (no ca) for localhost, which no public CA certifies; give upstream_tls.ca (the CA that signed the instances' certificates) or upstream_tls.server_name (the public name their certificate is for)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(value: serde_json::Value) -> UpstreamTlsSpec {
        serde_json::from_value(value).expect("an upstream_tls section")
    }

    #[test]
    fn h2_needs_a_trust_and_the_trust_needs_h2() {
        let ca = tls(serde_json::json!({"ca": "/etc/cutover/ca.pem"}));
        assert_eq!(check("grpc", Upstream::H2, Some(&ca)), Ok(()));
        assert_eq!(ca.server_name(), "localhost");
        let public = tls(serde_json::json!({"server_name": "grpc.example.com"}));
        assert_eq!(check("grpc", Upstream::H2, Some(&public)), Ok(()));
        let ip = tls(serde_json::json!({"ca": "/ca.pem", "server_name": "127.0.0.1"}));
        assert_eq!(check("grpc", Upstream::H2, Some(&ip)), Ok(()));
        assert_eq!(check("grpc", Upstream::H2c, None), Ok(()));
        let cases = [
            (
                Upstream::H2,
                None,
                "upstream: h2 of grpc needs upstream_tls",
            ),
            (
                Upstream::H2c,
                Some(ca.clone()),
                "upstream_tls of grpc is for upstream: h2",
            ),
            (
                Upstream::H2,
                Some(tls(serde_json::json!({"ca": "ca.pem"}))),
                "upstream_tls.ca of grpc (ca.pem) is not an absolute path",
            ),
            (
                Upstream::H2,
                Some(tls(
                    serde_json::json!({"ca": "/ca.pem", "server_name": "a b"}),
                )),
                "upstream_tls.server_name of grpc (\"a b\") is not a DNS name",
            ),
            (
                Upstream::H2,
                Some(UpstreamTlsSpec::default()),
                "upstream_tls of grpc trusts the public roots (no ca) for localhost",
            ),
        ];
        for (upstream, section, expected) in cases {
            let err = check("grpc", upstream, section.as_ref()).unwrap_err();
            assert!(err.starts_with(expected), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_value::<UpstreamTlsSpec>(
            serde_json::json!({"ca": "/ca.pem", "insecure": true}),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `insecure`"),
            "{err}"
        );
    }
}
