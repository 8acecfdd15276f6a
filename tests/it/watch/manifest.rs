//! Watched manifest URLs (http and S3 on moto_server): deployed when the content changes, and
//! only then.

use super::{Setup, DEADLINE};
use crate::support::wait_until;

#[test]
fn a_watched_manifest_url_is_deployed_on_change_only() {
    let s = Setup::new();
    s.gh.set_manifest(
        "shop.yml",
        "dest: /srv/a\ncommands: {pre: [\"echo one\"]}\n",
    );
    let config = s.manifest_config(&s.gh.manifest_url("shop.yml"));
    let _w = s.spawn(&config, &[]);
    wait_until("first manifest deployed", DEADLINE, || {
        s.deploys().len() == 1
    });
    wait_until("three more polls", DEADLINE, || {
        s.gh.seen_under("/manifests/").len() >= 4
    });
    let polls = s.gh.seen_under("/manifests/");
    assert!(
        polls[1..]
            .iter()
            .all(|p| p.status == 304 && p.if_none_match.is_some()),
        "{polls:#?}"
    );
    assert_eq!(s.deploys().len(), 1);

    s.gh.set_manifest(
        "shop.yml",
        "dest: /srv/a\ncommands: {pre: [\"echo two\"]}\n",
    );
    wait_until("changed manifest deployed", DEADLINE, || {
        s.deploys().len() == 2
    });
    let second = s.deploys()[1].clone();
    assert!(s.manifest(&second).contains("echo two"));
    let n = s.gh.seen_under("/manifests/").len();
    wait_until("two more polls", DEADLINE, || {
        s.gh.seen_under("/manifests/").len() >= n + 2
    });
    assert_eq!(s.deploys().len(), 2);
}

#[test]
fn a_watched_s3_manifest_is_deployed_on_change_only() {
    let s = Setup::new();
    let moto = crate::support::s3::Moto::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(moto.put(
        "deploys",
        "shop.yml",
        b"dest: /srv/a\ncommands: {pre: [\"echo one\"]}\n".to_vec(),
    ));
    let config = s.manifest_config("s3://deploys/shop.yml");
    let env: Vec<(&str, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _w = s.spawn(&config, &env);
    wait_until("first manifest deployed", DEADLINE, || {
        s.deploys().len() == 1
    });
    let first = s.deploys()[0].clone();
    // Idle polls after the deploy: S3 answers the ETag with 304, recorded as "not modified".
    wait_until("an idle poll", DEADLINE, || {
        let st = s.status();
        st.contains(&format!("deployed:    {first}")) && st.contains("not modified (304)")
    });
    assert_eq!(s.deploys().len(), 1);

    rt.block_on(moto.put(
        "deploys",
        "shop.yml",
        b"dest: /srv/a\ncommands: {pre: [\"echo two\"]}\n".to_vec(),
    ));
    wait_until("changed manifest deployed", DEADLINE, || {
        s.deploys().len() == 2
    });
    let second = s.deploys()[1].clone();
    assert!(s.manifest(&second).contains("echo two"));
    wait_until("an idle poll after the change", DEADLINE, || {
        let st = s.status();
        st.contains(&format!("deployed:    {second}")) && st.contains("not modified (304)")
    });
    assert_eq!(s.deploys().len(), 2);
}
