//! The operator's `cutover promote` and `cutover abort`: checked by the app task against the
//! rollout in flight, then handed to its canary, whose deploy reports the outcome.

use crate::protocol::app::Strategy;
use crate::protocol::{CanaryReply, ErrorKind, ErrorReply, Response};
use crate::supervisor::rollout::{CanaryDecision, RolloutKind};

use super::task::AppTask;

impl AppTask {
    /// Hands `decision` to the running canary; the deploy's own client gets the outcome.
    pub(super) fn decide(&self, decision: CanaryDecision) -> Response {
        let verb = match decision {
            CanaryDecision::Promote => "promote",
            CanaryDecision::Abort => "abort",
        };
        let name = &self.context.name;
        let refuse = |message: String| {
            Response::Error(ErrorReply {
                kind: ErrorKind::BadRequest,
                message,
            })
        };
        let Some(run) = &self.rollout else {
            return refuse(format!(
                "no rollout of {name} is in progress: nothing to {verb}"
            ));
        };
        let canary = self
            .record
            .releases
            .get(&run.version)
            .is_some_and(|r| r.spec.strategy == Strategy::Canary);
        if run.kind != RolloutKind::Deploy || !canary {
            return refuse(format!(
                "the {} of {} to {} is not a canary: nothing to {verb}",
                run.kind, name, run.version
            ));
        }
        match run.decisions.try_send(decision) {
            Ok(()) => Response::Decided(CanaryReply {
                app: name.clone(),
                message: format!(
                    "{verb} handed to the canary of {}; its deploy reports the outcome",
                    run.version
                ),
            }),
            Err(_) => refuse(format!(
                "the canary of {} has decisions pending already",
                run.version
            )),
        }
    }
}
