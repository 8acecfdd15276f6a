//! `cutover supervise --log-format json`: every line the supervisor writes while it starts and
//! deploys is a JSON object, with the event's fields (the app) beside its message.

use crate::support::app::App;
use crate::support::json_lines;
use crate::support::supervisor::Supervisor;

#[test]
fn the_supervisors_log_is_one_json_object_per_line() {
    let app = App::new("shop");
    let supervisor = Supervisor::start_with(app.home(), |command| {
        command.args(["--log-format", "json"]);
    });
    app.place("v1");
    app.place("v2");
    supervisor.deploy_ok(&app, "v1");
    app.wait_serving("v1");
    supervisor.deploy_ok(&app, "v2");
    app.wait_serving("v2");

    let text = supervisor.log();
    let lines = json_lines(&text);
    assert!(lines.len() > 5, "{text}");
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line.contains_key(key), "no {key} in {line:?}");
        }
        assert!(
            line.get("message").is_some_and(|m| m.is_string()),
            "no message in {line:?}"
        );
    }
    // The event's own fields stand beside the message, not inside it.
    assert!(
        lines
            .iter()
            .any(|l| l.get("app").is_some_and(|a| a == "shop")
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("route now"))),
        "no `route now` line with its app:\n{text}"
    );
}
