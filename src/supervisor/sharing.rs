//! Apps on one listen address (and HTTPS redirects on a plain one): the proxy an app gets (it
//! joins the one already serving its address, else takes the socket passed for it, else the
//! challenge-only port ACME opened there, else binds anew), and what apps sharing an
//! address must agree on, checked before a deploy starts: routes that requests can tell apart,
//! HTTP mode, and the same PROXY protocol and TLS settings.

use std::net::SocketAddr;

use crate::protocol::app::Mode;
use crate::protocol::routes::collision_message;
use crate::protocol::{AppSpec, ErrorKind, ErrorReply};
use crate::supervisor::acme::Manager;
use crate::supervisor::app::AppHandle;
use crate::supervisor::listeners::Listeners;
use crate::supervisor::proxy::{load_certificate, Proxy};
use crate::supervisor::rollout::contract::redirect_name;
use crate::supervisor::store::State;
use crate::supervisor::upstream_tls::Wire;

/// What `spec`'s app may not do beside `others` (the live specs of the other apps on its listen
/// address), in one line naming both apps and the fix.
pub fn check(spec: &AppSpec, others: &[&AppSpec]) -> Result<(), String> {
    let routes = spec.routes()?;
    for other in others {
        let tcp = [spec, *other].into_iter().find(|s| s.mode == Mode::Tcp);
        if let Some(tcp) = tcp {
            return Err(format!(
                "{} and {} both listen on {}, and {} is mode: tcp, which cannot share an address (a TCP connection names no host); give one of them another listen",
                spec.name, other.name, spec.listen, tcp.name
            ));
        }
        if spec.proxy_protocol != other.proxy_protocol {
            return Err(format!(
                "{} and {} both listen on {}, one with proxy_protocol and one without; a connection cannot be both, so set it alike on both",
                spec.name, other.name, spec.listen
            ));
        }
        if spec.tls.is_some() != other.tls.is_some() {
            let (with, without) = if spec.tls.is_some() {
                (spec, *other)
            } else {
                (*other, spec)
            };
            return Err(format!(
                "{} and {} both listen on {}, and only {} has tls; an address is HTTPS or not, so give {} a tls section or another listen",
                spec.name, other.name, spec.listen, with.name, without.name
            ));
        }
        if let Some(route) = routes.collision(&other.routes()?) {
            return Err(collision_message(&spec.name, &other.name, &route));
        }
    }
    Ok(())
}

/// Refuses the deploy of `spec` where the other apps on its listen address (in the supervisor's
/// `state`) could not live beside it (see [`check`]).
pub fn check_beside(state: &State, spec: &AppSpec) -> Result<(), ErrorReply> {
    // A certificate that cannot be served stops the deploy before anything starts.
    if let Some((cert, key)) = spec
        .tls
        .as_ref()
        .and_then(|tls| Some((tls.cert.as_ref()?, tls.key.as_ref()?)))
    {
        load_certificate(cert, key).map_err(|why| ErrorReply {
            kind: ErrorKind::BadRequest,
            message: format!("tls of {}: {why}", spec.name),
        })?;
    }
    // So does a DNS-01 hook that could not be run.
    let acme = spec.tls.as_ref().and_then(|tls| tls.acme.as_ref());
    if let Some(hook) = acme.and_then(|acme| acme.dns_hook.as_ref()) {
        use std::os::unix::fs::PermissionsExt;
        let runnable =
            std::fs::metadata(hook).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !matches!(runnable, Ok(true)) {
            return Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!(
                    "tls.acme.dns_hook of {} ({}) is not an executable file on this host; install it and chmod +x it",
                    spec.name,
                    hook.display()
                ),
            });
        }
    }
    // So does a CA for the instances' certificates that cannot be read (`upstream: h2`).
    Wire::of(spec).map_err(|message| ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    })?;
    let redirect = |spec: &AppSpec| spec.tls.as_ref().and_then(|t| t.redirect_from.clone());
    if let Some(record) = state.apps.get(&spec.name) {
        let (was, is) = (redirect(&record.spec), redirect(spec));
        if was != is {
            return Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!(
                    "tls.redirect_from of {} changes from {} to {}, which only a new start of the app takes: keep it, or `cutover stop {}` and deploy again",
                    spec.name,
                    was.as_deref().unwrap_or("none"),
                    is.as_deref().unwrap_or("none"),
                    spec.name
                ),
            });
        }
    }
    let Ok(listen) = spec.listen_addr() else {
        return Ok(()); // `deploy::validate` says what is wrong with it
    };
    let others: Vec<&AppSpec> = state
        .apps
        .iter()
        .filter(|(name, record)| **name != spec.name && record.spec.listen_addr() == Ok(listen))
        .map(|(_, record)| &record.spec)
        .collect();
    check(spec, &others).map_err(|message| ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    })
}

/// The proxy of an app among `apps` already serving on `listen` (its own address, or its HTTPS
/// redirect's), to share the address with, and whether systemd passed its socket.
pub fn neighbour<'a>(
    apps: impl IntoIterator<Item = &'a AppHandle>,
    listen: SocketAddr,
) -> Option<(&'a Proxy, bool)> {
    apps.into_iter()
        .map(|task| &task.context)
        .find_map(|context| {
            if context.listen == listen {
                return Some((&context.proxy, context.systemd_socket));
            }
            let redirect = context.redirect.as_ref()?;
            (redirect.local_addr == listen).then_some((redirect, false))
        })
}

/// `spec`'s HTTPS redirect (see [`bind_redirect`]), beside what serves its address among `apps`
/// if anything does.
pub fn redirect<'a>(
    spec: &AppSpec,
    listen: SocketAddr,
    apps: impl IntoIterator<Item = &'a AppHandle>,
    inherited: &std::sync::Mutex<Listeners>,
    acme: &Manager,
) -> Result<Option<Proxy>, ErrorReply> {
    let addr = spec
        .tls
        .as_ref()
        .and_then(|t| t.redirect_addr(&spec.name).ok().flatten());
    let sharing = addr.and_then(|addr| neighbour(apps, addr));
    bind_redirect(spec, listen, inherited, acme, sharing)
}

/// The HTTPS redirect of `spec`'s app (`tls.redirect_from`), if it has one, answering for its
/// hosts with the port of its `listen`: beside what already serves that address (`sharing`),
/// else on the socket handed over for it, else bound anew; accepting at once.
fn bind_redirect(
    spec: &AppSpec,
    listen: SocketAddr,
    inherited: &std::sync::Mutex<Listeners>,
    acme: &Manager,
    sharing: Option<(&Proxy, bool)>,
) -> Result<Option<Proxy>, ErrorReply> {
    let bad = |message: String| ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    };
    let Some(tls) = &spec.tls else {
        return Ok(None);
    };
    let Some(addr) = tls.redirect_addr(&spec.name).map_err(bad)? else {
        return Ok(None);
    };
    let name = redirect_name(&spec.name);
    let routes = spec.routes().map_err(bad)?;
    let proxy = match sharing {
        Some((neighbour, _)) => neighbour.join(&name, routes).map_err(bad)?,
        None => {
            let passed = lock(inherited).take_app(&name, addr);
            let proxy = match passed {
                Some(passed) => Proxy::from_listener_held(passed.listener),
                None => bind_anew(addr, acme),
            }
            .map_err(|e| {
                // `e` names the address (`Front::bind`).
                bad(format!(
                    "tls.redirect_from of {}: {e}; free that address or pick another",
                    spec.name
                ))
            })?;
            proxy.set_routes(&name, routes).map_err(bad)?;
            proxy
        }
    };
    proxy.set_redirect_to_https(Some(listen.port()));
    proxy.start_accepting();
    Ok(Some(proxy))
}

/// The proxy for `spec`'s app on `addr`, taking its routes and serving its certificate: a place
/// beside the apps already served there (`sharing`: one of their proxies, and whether systemd
/// passed its socket), else the socket passed for it, else one bound anew — either accepting
/// only once `start_accepting` is called; and whether systemd passed that socket.
pub fn bind(
    spec: &AppSpec,
    addr: SocketAddr,
    inherited: &std::sync::Mutex<Listeners>,
    acme: &Manager,
    sharing: Option<(&Proxy, bool)>,
) -> Result<(Proxy, bool), ErrorReply> {
    let bad = |message: String| ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    };
    let name = &spec.name;
    let routes = spec.routes().map_err(bad)?;
    let (proxy, systemd) = if let Some((neighbour, systemd)) = sharing {
        // A copy of the same socket handed over for this app is not needed: the address is
        // served already.
        let passed = lock(inherited).take_named(name, addr);
        drop(passed);
        (neighbour.join(name, routes).map_err(bad)?, systemd)
    } else {
        let passed = lock(inherited).take_app(name, addr);
        let (proxy, systemd) = match passed {
            Some(passed) => {
                let proxy = Proxy::from_listener_held(passed.listener).map_err(|e| ErrorReply {
                    kind: ErrorKind::Internal,
                    message: format!("cannot serve on the socket passed for {addr}: {e}"),
                })?;
                (proxy, passed.systemd)
            }
            None => {
                let proxy = bind_anew(addr, acme).map_err(|e| {
                    // `e` names the address (`Front::bind`).
                    bad(format!("{e}; free that address or pick another"))
                })?;
                (proxy, false)
            }
        };
        proxy.set_routes(name, routes).map_err(bad)?;
        (proxy, systemd)
    };
    proxy
        .set_tls(name, spec.tls.as_ref())
        .map_err(|why| bad(format!("tls of {name}: {why}")))?;
    proxy.set_h2c(spec.h2c);
    proxy
        .set_upstream(name, spec.upstream, spec.upstream_tls.as_ref())
        .map_err(bad)?;
    Ok((proxy, systemd))
}

/// A proxy on `addr` no app serves yet: the challenge-only port ACME opened there for an
/// order, if there is one, else a socket bound now.
fn bind_anew(addr: SocketAddr, acme: &Manager) -> std::io::Result<Proxy> {
    match acme.take_port(addr) {
        Some(listener) => Proxy::from_listener_held(listener),
        None => Proxy::bind_held(addr),
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, extra: serde_json::Value) -> AppSpec {
        let mut value = serde_json::json!({
            "name": name, "run": "./app", "listen": "127.0.0.1:8080",
        });
        value
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn apps_on_one_address_must_be_told_apart_and_agree_on_the_connection() {
        let shop = spec("shop", serde_json::json!({"hosts": ["shop.example.com"]}));
        let blog = spec("blog", serde_json::json!({"hosts": ["blog.example.com"]}));
        let any = spec("site", serde_json::json!({}));
        assert_eq!(check(&shop, &[&blog, &any]), Ok(()));
        let again = spec("shop2", serde_json::json!({"hosts": ["SHOP.example.com"]}));
        let err = check(&again, &[&blog, &shop]).unwrap_err();
        assert!(
            err.starts_with("shop2 and shop both take shop.example.com"),
            "{err}"
        );
        let err = check(&spec("other", serde_json::json!({})), &[&any]).unwrap_err();
        assert!(err.contains("other and site both take any host"), "{err}");
        let tcp = spec("db", serde_json::json!({"mode": "tcp"}));
        let err = check(&shop, &[&tcp]).unwrap_err();
        assert!(err.contains("db is mode: tcp"), "{err}");
        let pp = spec(
            "pp",
            serde_json::json!({"hosts": ["pp.example.com"], "proxy_protocol": true}),
        );
        let err = check(&pp, &[&shop]).unwrap_err();
        assert!(err.contains("set it alike on both"), "{err}");
    }
}
