//! Several apps on one listen address, routed by `Host` and path prefix: each deploys blue-green
//! under load without failing a request of its own or of its neighbour, routes that requests
//! could not tell apart are refused naming both apps, and the address survives one app's stop
//! and the supervisor's hand-over.

use cutover::protocol::app::Mode;
use cutover::protocol::{ErrorKind, Request as ControlRequest, Response, StopRequest};

use crate::support::app::App;
use crate::support::control_socket::error_of;
use crate::support::load::{Load, LoadReport};
use crate::support::request::Request;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::wait_until;

/// `shop` on `shop.test` and `blog` on `*.blog.test`, on one address, both serving v1.
fn shop_and_blog() -> (App, App, Supervisor) {
    let mut shop = App::new("shop");
    shop.tweak = |spec| spec.hosts = vec!["shop.test".into()];
    shop.host = Some("shop.test".into());
    let mut blog = App::new("blog");
    blog.listen = shop.listen;
    blog.tweak = |spec| spec.hosts = vec!["*.blog.test".into()];
    blog.host = Some("www.blog.test".into());
    let supervisor = shop.serving(&["v1", "v2"]);
    for version in ["b1", "b2"] {
        blog.place(version);
    }
    supervisor.deploy_ok(&blog, "b1");
    blog.wait_serving("b1");
    (shop, blog, supervisor)
}

fn get(app: &App, host: &str, path: &str) -> (u16, String) {
    let answer = Request::get(path)
        .header("host", host)
        .send(app.listen)
        .unwrap_or_else(|e| panic!("GET {path} for {host}: {e}"));
    (answer.status, answer.body)
}

fn assert_clean(report: &LoadReport, versions: &[&str], who: &str) {
    assert_eq!(report.failures(), 0, "{who}: {report:?}");
    let seen: Vec<&str> = report.versions.keys().map(String::as_str).collect();
    assert_eq!(
        seen, versions,
        "{who} heard only its own versions: {report:?}"
    );
}

#[test]
fn two_apps_on_one_address_each_deploy_blue_green_under_load_without_a_failure() {
    let (shop, blog, supervisor) = shop_and_blog();
    let shop_load = Load::for_host(shop.listen, 3, "shop.test", "/");
    let blog_load = Load::for_host(blog.listen, 3, "news.blog.test", "/");
    shop_load.wait_for_more_ok(50, ROLLOUT);
    blog_load.wait_for_more_ok(50, ROLLOUT);

    supervisor.deploy_ok(&shop, "v2");
    shop_load.wait_for_more_ok(50, ROLLOUT);
    blog_load.wait_for_more_ok(50, ROLLOUT);
    supervisor.deploy_ok(&blog, "b2");
    shop_load.wait_for_more_ok(50, ROLLOUT);
    blog_load.wait_for_more_ok(50, ROLLOUT);

    assert_clean(&shop_load.stop(), &["v1", "v2"], "shop");
    assert_clean(&blog_load.stop(), &["b1", "b2"], "blog");
    // Host names are case-blind and may carry the port.
    let (status, body) = get(&shop, &format!("SHOP.test:{}", shop.listen.port()), "/");
    assert_eq!(
        (status, body.starts_with("hello from v2")),
        (200, true),
        "{body}"
    );
    // A wildcard takes one label, as a certificate's does.
    let (status, body) = get(&shop, "a.b.blog.test", "/");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no app on this address takes this host"),
        "{body}"
    );
    let (status, _) = get(&shop, "elsewhere.test", "/");
    assert_eq!(status, 404);

    // Each app keeps its own counters; status shows the routes and the neighbour.
    let status = supervisor.status(&shop);
    assert_eq!(status.routes, "shop.test", "{status:?}");
    assert_eq!(status.shares_address_with, ["blog"], "{status:?}");
    assert_eq!(supervisor.status(&blog).routes, "*.blog.test");
    let output = supervisor.run(&["status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("ROUTES") && text.contains("*.blog.test"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} shared with shop", blog.listen)),
        "{text}"
    );
}

#[test]
fn one_app_stopped_leaves_its_neighbour_serving_and_its_host_unrouted() {
    let (shop, blog, supervisor) = shop_and_blog();
    let shop_load = Load::for_host(shop.listen, 2, "shop.test", "/");
    shop_load.wait_for_more_ok(20, ROLLOUT);

    let stopped = supervisor.request(ControlRequest::Stop(StopRequest {
        app: blog.name.clone(),
    }));
    assert!(matches!(stopped, Response::Stopped(_)), "{stopped:?}");
    let (status, _) = get(&blog, "www.blog.test", "/");
    assert_eq!(status, 404, "blog's host is no longer routed");
    shop_load.wait_for_more_ok(20, ROLLOUT);
    assert_clean(&shop_load.stop(), &["v1"], "shop");
    assert!(supervisor.status(&shop).shares_address_with.is_empty());

    // It comes back beside shop.
    supervisor.deploy_ok(&blog, "b2");
    blog.wait_serving("b2");
    shop.wait_serving("v1");
}

#[test]
fn routes_requests_cannot_tell_apart_are_refused_naming_both_apps() {
    let (shop, _blog, supervisor) = shop_and_blog();
    let mut copy = App::new("shop-copy");
    copy.listen = shop.listen;
    copy.tweak = |spec| spec.hosts = vec!["www.shop.test".into(), "Shop.Test.".into()];
    copy.place("c1");
    let (kind, message) = error_of(supervisor.deploy(&copy, "c1"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(
        message.starts_with("shop-copy and shop both take shop.test on this address"),
        "{message}"
    );

    let mut raw = App::new("raw");
    raw.listen = shop.listen;
    raw.tweak = |spec| spec.mode = Mode::Tcp;
    raw.place("r1");
    let (kind, message) = error_of(supervisor.deploy(&raw, "r1"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(message.contains("mode: tcp"), "{message}");

    let mut proxied = App::new("proxied");
    proxied.listen = shop.listen;
    proxied.tweak = |spec| {
        spec.hosts = vec!["proxied.test".into()];
        spec.proxy_protocol = true;
    };
    proxied.place("p1");
    let (kind, message) = error_of(supervisor.deploy(&proxied, "p1"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(message.contains("proxy_protocol"), "{message}");

    // Nothing of the refused apps was started, and the others serve on.
    for name in ["shop-copy", "raw", "proxied"] {
        let status = supervisor.request(ControlRequest::Status(cutover::protocol::StatusRequest {
            app: Some(name.into()),
        }));
        let (kind, _) = error_of(status);
        assert_eq!(kind, ErrorKind::NotFound, "{name} was never created");
    }
    shop.wait_serving("v1");
}

#[test]
fn a_path_prefix_and_a_catch_all_share_the_address_with_a_host() {
    let (shop, _blog, supervisor) = shop_and_blog();
    // `api` takes /bytes on shop.test: more specific than shop's whole host.
    let mut api = App::new("api");
    api.listen = shop.listen;
    api.tweak = |spec| {
        spec.hosts = vec!["shop.test".into()];
        spec.path_prefix = Some("/bytes".into());
    };
    api.host = Some("shop.test".into());
    api.place("a1");
    supervisor.deploy_ok(&api, "a1");
    // `site` takes every host no other app names.
    let mut site = App::new("site");
    site.listen = shop.listen;
    site.host = Some("anything.test".into());
    site.place("s1");
    supervisor.deploy_ok(&site, "s1");
    site.wait_serving("s1");

    let requests = |app: &App| -> u64 {
        let status = supervisor.status(app);
        status.instances.iter().map(|i| i.requests).sum()
    };
    let before = (requests(&api), requests(&shop));
    for _ in 0..5 {
        let (status, body) = get(&shop, "shop.test", "/bytes?n=3");
        assert_eq!((status, body.len()), (200, 3), "{body}");
    }
    // The prefix is whole path segments: /bytesize is shop's (its demo app answers 404).
    let (status, _) = get(&shop, "shop.test", "/bytesize");
    assert_eq!(status, 404);
    wait_until(
        "the counters to show where the requests went",
        ROLLOUT,
        || (requests(&api), requests(&shop)) == (before.0 + 5, before.1 + 1),
    );
    shop.wait_serving("v1");
    let (_, body) = get(&shop, "www.blog.test", "/");
    assert!(body.starts_with("hello from b1"), "{body}");
    let (_, body) = get(&shop, "blog.test", "/");
    assert!(body.starts_with("hello from s1"), "the catch-all: {body}");
}

#[test]
fn handed_over_with_two_apps_on_one_address_no_request_fails() {
    let (shop, blog, mut supervisor) = shop_and_blog();
    let shop_pids = supervisor.live_pids(&shop);
    let blog_pids = supervisor.live_pids(&blog);
    let shop_load = Load::for_host(shop.listen, 2, "shop.test", "/");
    let blog_load = Load::for_host(blog.listen, 2, "www.blog.test", "/");
    for _ in 0..2 {
        supervisor.take_over();
        shop_load.wait_for_more_ok(20, ROLLOUT);
        blog_load.wait_for_more_ok(20, ROLLOUT);
    }
    assert_clean(&shop_load.stop(), &["v1"], "shop");
    assert_clean(&blog_load.stop(), &["b1"], "blog");
    assert_eq!(supervisor.live_pids(&shop), shop_pids, "instances stay");
    assert_eq!(supervisor.live_pids(&blog), blog_pids, "instances stay");
    assert_eq!(supervisor.status(&blog).shares_address_with, ["shop"]);
    // The successor deploys on the shared address.
    supervisor.deploy_ok(&blog, "b2");
    blog.wait_serving("b2");
}
