//! The webhook endpoint: signatures checked, deliveries deduplicated, a release event wakes the
//! watch of its repository.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{asset, Setup, DEADLINE};
use crate::support::request::Request;
use crate::support::wait_until;

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn post_webhook(addr: &str, body: &[u8], signature: &str, delivery: &str) -> u16 {
    let answer = Request::new("POST", "/")
        .header("Host", addr)
        .header("X-GitHub-Event", "release")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(body)
        .send(addr.parse().expect("the webhook's address"))
        .expect("post webhook");
    answer.status
}

#[test]
fn a_signed_webhook_triggers_a_check_and_a_bad_signature_gets_401() {
    let s = Setup::new();
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let secret = "It's a Secret to Everybody";
    let config = s.github_config(
        "1h",
        "",
        &format!("webhook: {{ listen: \"{addr}\", secret_env: SHOP_HOOK_SECRET }}"),
    );
    let _w = s.spawn(&config, &[("SHOP_HOOK_SECRET", secret)]);
    wait_until("the first poll", DEADLINE, || {
        s.gh.release_lists().len() == 1
    });

    s.gh.publish("v1.0.0", false, vec![asset("1.0.0")]);
    let event = std::fs::read_to_string(crate::support::fixture("github/release-event.json"))
        .unwrap()
        .replace("Codertocat/Hello-World", "octo/shop");
    let body = event.as_bytes();
    wait_until("the webhook endpoint", DEADLINE, || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    assert_eq!(post_webhook(&addr, body, &sign("wrong", body), "d-1"), 401);
    assert_eq!(post_webhook(&addr, body, "", "d-1"), 401);
    assert_eq!(
        s.gh.release_lists().len(),
        1,
        "a refused webhook triggers nothing"
    );

    assert_eq!(post_webhook(&addr, body, &sign(secret, body), "d-1"), 202);
    wait_until("1.0.0 deployed", DEADLINE, || s.deploys() == ["1.0.0"]);
    wait_until("state saved", DEADLINE, || {
        s.status().contains("deployed:    1.0.0")
    });
    let lists = s.gh.release_lists().len();
    assert_eq!(lists, 2);

    // GitHub's redelivery of the same id is acknowledged and ignored.
    assert_eq!(post_webhook(&addr, body, &sign(secret, body), "d-1"), 200);
    // A new delivery checks again (a 304: still one deploy).
    assert_eq!(post_webhook(&addr, body, &sign(secret, body), "d-2"), 202);
    wait_until("the second webhook's check", DEADLINE, || {
        s.gh.release_lists().len() == 3
    });
    assert_eq!(s.gh.release_lists()[2].status, 304);
    assert_eq!(s.deploys(), ["1.0.0"]);
    let log = std::fs::read_to_string(s.path("watch.log")).unwrap();
    assert!(log.contains("bad or missing X-Hub-Signature-256"), "{log}");
}
