//! The supervisor↔supervisor contract of a hand-over: what a new supervisor and the one it
//! replaces say on `STATE/handover.sock`, in the control socket's frames ([`super::codec`]).
//!
//! new → old: [`TakeOver`]; old → new: [`Offer`], whose `Sockets` frame carries the listening
//! sockets themselves as SCM_RIGHTS, one [`SocketInfo`] per descriptor in order; new → old:
//! [`Outcome`] once the new one serves (or why it could not, and the old one carries on).
//! The version only ever grows; a newer supervisor must still speak every older version, since
//! taking over from an older binary is what an upgrade is.

use serde::{Deserialize, Serialize};

/// The hand-over protocol version this build speaks.
pub const HANDOVER_VERSION: u32 = 1;

/// The new supervisor asks the running one to hand over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TakeOver {
    pub version: u32,
    pub pid: u32,
    /// `cutover X.Y.Z` of the new supervisor, for the old one's log.
    pub supervisor: String,
}

/// The running supervisor's answer to [`TakeOver`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "offer")]
pub enum Offer {
    /// Its apps are let go of and persisted; the sockets come with this frame.
    Sockets {
        version: u32,
        supervisor: String,
        sockets: Vec<SocketInfo>,
        /// How many hand-overs the offering supervisor's line had behind it (its own start
        /// counts none): the successor reports this plus one as `cutover_handovers_total`, so
        /// the count goes on across processes. Written only when not 0; an older supervisor
        /// sends none, read as 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        handovers: u64,
    },
    Refused {
        message: String,
    },
}

/// One handed-over descriptor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// The app whose public socket it is; `None` for the control socket and unclaimed ones.
    pub name: Option<String>,
    /// systemd passed it (and keeps a copy): an app stopped later gives it back to the pool
    /// instead of closing it, since closing would not free the address. Written only when true,
    /// so version 1 frames stay as they were; a supervisor that does not know it ignores it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub systemd: bool,
    /// The supervisor's admin address (`--metrics-listen`), not an app's: kept apart so that no
    /// app takes it. Written only when true; a supervisor that does not know it sees an
    /// unclaimed socket that no app may listen on, and closes it when it stops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The new supervisor's last word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// It serves on the sockets: the old one stops accepting, lets its clients go and exits.
    Serving,
    /// It could not start: the old one takes its apps back on the same sockets.
    Failed { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames of version 1 as they travel: a newer cutover must keep reading and writing
    /// exactly these to take over from (or hand over to) this one.
    #[test]
    fn version_1_frames_are_stable() {
        let offer = Offer::Sockets {
            version: 1,
            supervisor: "cutover 0.1.0".to_owned(),
            sockets: vec![
                SocketInfo {
                    name: None,
                    ..SocketInfo::default()
                },
                SocketInfo {
                    name: Some("shop".to_owned()),
                    ..SocketInfo::default()
                },
            ],
            handovers: 0,
        };
        let json = r#"{"offer":"sockets","version":1,"supervisor":"cutover 0.1.0","sockets":[{"name":null},{"name":"shop"}]}"#;
        assert_eq!(serde_json::to_string(&offer).unwrap(), json);
        assert_eq!(serde_json::from_str::<Offer>(json).unwrap(), offer);
        let passed = SocketInfo {
            name: Some("shop".to_owned()),
            systemd: true,
            admin: false,
        };
        let json = serde_json::to_string(&passed).unwrap();
        assert_eq!(json, r#"{"name":"shop","systemd":true}"#);
        assert_eq!(serde_json::from_str::<SocketInfo>(&json).unwrap(), passed);
        let admin = SocketInfo {
            admin: true,
            ..SocketInfo::default()
        };
        let json = serde_json::to_string(&admin).unwrap();
        assert_eq!(json, r#"{"name":null,"admin":true}"#);
        assert_eq!(serde_json::from_str::<SocketInfo>(&json).unwrap(), admin);
        let counted = r#"{"offer":"sockets","version":1,"supervisor":"cutover 0.1.0","sockets":[],"handovers":2}"#;
        match serde_json::from_str::<Offer>(counted).unwrap() {
            Offer::Sockets { handovers, .. } => assert_eq!(handovers, 2),
            other => panic!("{other:?}"),
        }
        let ask = TakeOver {
            version: 1,
            pid: 42,
            supervisor: "cutover 0.1.0".to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&ask).unwrap(),
            r#"{"version":1,"pid":42,"supervisor":"cutover 0.1.0"}"#
        );
        for (outcome, json) in [
            (Outcome::Serving, r#"{"outcome":"serving"}"#),
            (
                Outcome::Failed {
                    message: "no".to_owned(),
                },
                r#"{"outcome":"failed","message":"no"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&outcome).unwrap(), json);
            assert_eq!(serde_json::from_str::<Outcome>(json).unwrap(), outcome);
        }
    }
}
