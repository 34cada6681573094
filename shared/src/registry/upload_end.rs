//! Uploads nobody will finish are ended (`DELETE` on their location) rather than left to
//! the registry, which keeps them (distribution purges them only after a week) with what
//! was sent into them. An upload is ended on purpose when its copy fails, and on its own
//! when the copy is dropped (at its task's timeout): [`UploadEnd`] sends the request from
//! its `Drop`, and the process waits for such requests before it exits ([`uploads_ended`]).
//!
//! Distribution ends only an upload whose bytes still match the state its location carries:
//! one dropped mid-PUT (some bytes sent, the answer with a new location never read) is
//! refused (404) and stays until its purge. One dropped before its PUT sent anything —
//! its source slow to answer, the commonest way a copy reaches its timeout — is ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Url;
use tokio::sync::Notify;

use super::Registry;
use super::fetch::{Target, network};
use crate::ratelimit::Gate;

/// DELETEs sent from a `Drop` and not answered yet, in this process.
static ENDING: AtomicUsize = AtomicUsize::new(0);
static ENDED: Notify = Notify::const_new();

impl Registry {
    /// The DELETE that ends the upload at `location` when nobody will finish it, so that
    /// the registry does not keep it (distribution purges them only after a week). Armed
    /// only for an upload session of `target`'s repository, and not where bearer tokens
    /// are needed: a push token does not allow a DELETE (distribution wants its own
    /// `delete` action), and a refusal must not cost the repository its tokens.
    pub(super) async fn upload_end(&self, location: &Url, target: Target<'_>) -> UploadEnd {
        let session = format!("/v2/{}/blobs/uploads/", target.repo);
        if self.tokens.is_some() || !location.path().starts_with(&session) {
            return UploadEnd(None);
        }
        let Ok(client) = self.client_for(target.repo) else {
            return UploadEnd(None);
        };
        let delete = client
            .delete(location.clone())
            .timeout(self.request_timeout);
        let gate = self.gate.clone().map(|g| (g, self.host.clone()));
        UploadEnd(
            self.authorised(delete, location.as_str(), target)
                .await
                .ok()
                .map(|delete| Box::new(Armed { delete, gate })),
        )
    }

    /// Ends an upload now, under the gate like any request. One try, bounded; its failure
    /// is no one's concern.
    pub(super) async fn end_upload(&self, mut end: UploadEnd, target: Target<'_>) {
        let Some(armed) = end.0.take() else {
            return;
        };
        let sent = async { armed.delete.send().await.map_err(|e| network(&e, target)) };
        if let Err(e) = self
            .own_request("blob-upload-cancel", target.what, sent)
            .await
        {
            tracing::debug!(upload = target.what, error = %e, "an abandoned upload was not ended");
        }
    }
}

/// The DELETE ending an upload the registry opened, sent on its own if it is dropped
/// unsent: a copy dropped at its task's timeout leaves no upload behind (one dropped
/// mid-PUT only where the registry still accepts the DELETE; see the module's note).
/// Disarmed once the upload is finished; unarmed where no DELETE may be sent
/// ([`Registry::upload_end`]).
#[derive(Debug)]
pub(crate) struct UploadEnd(Option<Box<Armed>>);

/// The DELETE, and the gate it waits for when sent from a `Drop` (the registry's limits
/// hold for it as for any request).
#[derive(Debug)]
struct Armed {
    delete: reqwest::RequestBuilder,
    gate: Option<(Arc<dyn Gate>, String)>,
}

impl UploadEnd {
    pub(super) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for UploadEnd {
    fn drop(&mut self) {
        let Some(armed) = self.0.take() else {
            return;
        };
        // Outside a runtime (the process is ending) it is left to the registry's purge.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let ending = Ending::start();
            runtime.spawn(async move {
                let Armed { delete, gate } = *armed;
                let _permit = match &gate {
                    Some((gate, host)) => Some(gate.admit(host, 1).await),
                    None => None,
                };
                if let Err(e) = delete.send().await {
                    tracing::debug!(error = %e, "a dropped upload was not ended");
                }
                drop(ending);
            });
        }
    }
}

/// Waits (up to `limit`) for the DELETEs dropped uploads sent: a command's last copy dropped
/// at its timeout would otherwise leave its upload behind as the process exits.
pub async fn uploads_ended(limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        loop {
            let ended = ENDED.notified();
            if ENDING.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    })
    .await;
}

/// Counts one DELETE in flight for as long as it lives (cancelled with its task included).
struct Ending;

impl Ending {
    fn start() -> Self {
        ENDING.fetch_add(1, Ordering::AcqRel);
        Self
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        ENDING.fetch_sub(1, Ordering::AcqRel);
        ENDED.notify_waiters();
    }
}
