//! The app task's side of a canary: the operator's `promote`/`abort` handed to the running
//! rollout, and the candidates' place in the route while their share is above zero.

use crate::protocol::app::Strategy;
use crate::protocol::{CanaryReply, ErrorKind, ErrorReply, Response};
use crate::supervisor::canary::Decision;
use crate::supervisor::deploy::Kind;
use crate::supervisor::proxy::{Backend, CanaryRoute};

use super::instance::Lifecycle;
use super::AppTask;

impl AppTask {
    /// Hands `decision` to the running canary; the deploy's own client gets the outcome.
    pub(super) fn decide(&self, decision: Decision) -> Response {
        let verb = match decision {
            Decision::Promote => "promote",
            Decision::Abort => "abort",
        };
        let name = &self.shared.name;
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
        if run.kind != Kind::Deploy || !canary {
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

    /// The canary part of the route: the running deploy's healthy candidates and their share.
    pub(super) fn canary_route(&self) -> Option<CanaryRoute> {
        let share = self.canary?;
        let deploy = self.record.deploy.as_ref()?;
        let spec = &self.record.releases.get(&deploy.version)?.spec.canary;
        let backends: Vec<std::sync::Arc<Backend>> = deploy
            .candidates
            .iter()
            .filter_map(|r| self.instances.get(&r.id))
            .filter(|h| matches!(h.view.borrow().lifecycle, Lifecycle::Healthy { .. }))
            .map(|h| h.backend.clone())
            .collect();
        Some(CanaryRoute {
            backends,
            share,
            cookie: spec.cookie.clone(),
            header: spec.header.clone(),
        })
    }
}
