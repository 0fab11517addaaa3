//! The audit trail: one row in the append-only audit table and one line to syslog per decision
//! of the service (and per refusal, reads included), with every student-supplied string escaped,
//! so no value can pose as a second entry or a second field.

use crate::core::error::Error;
use crate::core::model::{RequestId, now_millis};
use crate::service::Service;
use crate::service::caller::Caller;
use crate::service::protocol::{Request, Response};
use crate::store::AuditRecord;

/// What a request's audit row will say, gathered while it is served.
pub(crate) struct Trail {
    action: &'static str,
    cluster: Option<String>,
    read: bool,
    /// The launch request a launch or launch-slaves made: a failed one still names what it
    /// launched (and terminated again).
    launched: Option<RequestId>,
    /// What a terminate found live before it ended it.
    terminated: Vec<String>,
    /// What an identity request did (users, key ids; never a secret), as the row's reason.
    detail: Option<String>,
}

impl Trail {
    /// The row of `caller`'s `request`; a cluster is named `owner/name`, its owner the one the
    /// request names, else the caller.
    pub(crate) fn begin(request: &Request, caller: &Caller) -> Self {
        let owner = request.owner().unwrap_or(caller.owner.as_str());
        Self {
            action: request.action(),
            cluster: request
                .cluster()
                .map(|name| AuditRecord::cluster_of(owner, name)),
            // Reads are not decisions, nor are the snapshot and the reconcile (which record
            // what exists); the reaper audits each of its own actions.
            read: request.is_read()
                || matches!(
                    request,
                    Request::Snapshot {} | Request::Reconcile { .. } | Request::Reap { .. }
                ),
            launched: None,
            terminated: Vec::new(),
            detail: None,
        }
    }

    pub(crate) fn detail(&mut self, detail: String) {
        self.detail = Some(detail);
    }

    pub(crate) fn launching(&mut self, request: &RequestId) {
        self.launched = Some(request.clone());
    }

    pub(crate) fn terminating(&mut self, ids: Vec<String>) {
        self.terminated = ids;
    }

    /// Writes the row: `done` with what the answer launched or terminated, else the verdict of
    /// the error's kind with its reason and what was tried.
    pub(crate) fn end(self, service: &Service, caller: &Caller, result: &Result<Response, Error>) {
        let tried = || -> Vec<String> {
            self.launched
                .as_ref()
                .and_then(|req| service.store().nodes_of_request(req.as_str()).ok())
                .map(|nodes| nodes.into_iter().map(|n| n.instance_id).collect())
                .unwrap_or_default()
        };
        let (decision, reason, instances) = match result {
            Ok(answer) => {
                let mut ids = answer.instances();
                if ids.is_empty() {
                    ids = self.terminated.clone();
                }
                ("done", self.detail.clone(), ids)
            }
            Err(e) => (
                e.kind().verdict(),
                Some(crate::core::error::one_line(e)),
                tried(),
            ),
        };
        // A quote asks what a launch would be told; the launch that follows is the decision,
        // and its refusal the one row.
        if self.action == "quote" || (self.read && decision != "refused") {
            return;
        }
        record(
            service,
            AuditRecord {
                at: String::new(),
                user: caller.owner.to_string(),
                action: self.action.to_owned(),
                cluster: self.cluster,
                decision: decision.to_owned(),
                reason,
                instances,
            },
        );
    }
}

/// Records one decision: a row in the audit table and a line to syslog, both bounded and
/// escaped (`AuditRecord::bounded`).
pub(crate) fn record(service: &Service, record: AuditRecord) {
    if let Err(e) = service.store().audit(&record, now_millis()) {
        tracing::error!("cannot write the audit trail: {e}");
    }
    crate::sys::syslog(&syslog_line(&record.bounded()));
}

/// The syslog line of a (bounded) record: every field quoted (Debug escapes quotes and
/// backslashes), so no value can pose as a second field.
fn syslog_line(record: &AuditRecord) -> String {
    format!(
        "user={:?} action={:?} cluster={:?} decision={:?}{}{}",
        record.user,
        record.action,
        record.cluster.as_deref().unwrap_or("-"),
        record.decision,
        record
            .reason
            .as_deref()
            .map(|r| format!(" reason={r:?}"))
            .unwrap_or_default(),
        if record.instances.is_empty() {
            String::new()
        } else {
            format!(" instances={}", record.instances.join(","))
        }
    )
}
