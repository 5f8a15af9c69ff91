//! Webhook deliveries (see [`crate::webhooks`]): sent by whichever worker looks first — every
//! worker session looks every second, and at once when this engine wrote new ones while a
//! session runs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Engine;
use crate::error::Result;
use crate::webhooks::{Attempted, Delivery, Sender, Settlement};

/// How often a worker looks for due deliveries.
pub(crate) const DELIVER_EVERY: Duration = Duration::from_secs(1);
/// The most deliveries in flight at once.
const BATCH: usize = 16;
/// The most attempts one look makes (the next look goes on).
const ROUNDS: usize = 64;

impl Engine {
    /// Sends the store's due webhook deliveries until none is due: leased to this engine, each
    /// POSTed within its time limit and settled — delivered, retried after its backoff or
    /// failed for good. Up to 16 are in flight at once, and each settled one makes room for
    /// the next due one (a slow receiver holds its own slot, not the others'). Returns how
    /// many attempts it made. Worker sessions call it (see the module docs); tools and tests
    /// may too.
    pub async fn deliver_webhooks(&self) -> Result<usize> {
        let owner = &self.inner.deliverer;
        // Made before anything is claimed: a delivery claimed by an engine that cannot send
        // would wait for its lease and lose an attempt.
        let sender = self.sender()?;
        let store = self.store()?;
        // Tasks of their own, not futures polled by this loop: a settle waiting for the
        // store's writer must go on while this loop claims (or it would wait for itself).
        let mut flying = tokio::task::JoinSet::new();
        let mut sent = 0;
        let mut due = true;
        let mut failed = None;
        loop {
            let room = BATCH
                .saturating_sub(flying.len())
                .min(ROUNDS * BATCH - sent);
            if due && room > 0 {
                match store.claim_deliveries(owner, room, self.now()).await {
                    Ok(batch) => {
                        due = batch.len() == room;
                        sent += batch.len();
                        for d in batch {
                            let (engine, sender) = (self.clone(), sender.clone());
                            flying.spawn(async move { engine.attempt(&sender, d).await });
                        }
                    }
                    // The ones in flight are still settled.
                    Err(e) => {
                        due = false;
                        failed = Some(e);
                    }
                }
            }
            match flying.join_next().await {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "a webhook delivery's task failed"),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    /// One attempt at `d`, settled.
    async fn attempt(&self, sender: &Sender, d: Delivery) {
        let d = &d;
        let settlement = if d.attempt > d.hook.retry.max_attempts {
            // Its last attempt's engine stopped mid-way: its lease ran out.
            Settlement::Failed {
                error: "the lease of its last attempt ran out".into(),
            }
        } else {
            let answer = sender.send(d).await;
            if let Err(Attempted::Failed(error) | Attempted::NotHere(error)) = &answer {
                tracing::debug!(delivery = %d.id, attempt = d.attempt, %error, "webhook delivery not made");
            }
            crate::webhooks::settle(answer, d, self.now(), fastrand::f64())
        };
        if let Settlement::Failed { error } = &settlement {
            tracing::warn!(delivery = %d.id, event = %d.event, url = %d.hook.url, %error, "webhook delivery failed for good");
        }
        // Not settled (the store failed, or the lease was taken over): the lease runs out and
        // the delivery is sent again.
        let settled = match self.store() {
            Ok(store) => {
                store
                    .settle_delivery(&d.id, d.attempt, &settlement, self.now())
                    .await
            }
            Err(e) => Err(e),
        };
        match settled {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(delivery = %d.id, "delivery taken over before it was settled")
            }
            Err(e) => {
                tracing::warn!(delivery = %d.id, error = %e, "could not settle a webhook delivery")
            }
        }
    }

    /// The webhook client, made on first use.
    fn sender(&self) -> Result<Sender> {
        let sender = self
            .inner
            .sender
            .get_or_init(|| Sender::new(self.inner.allow_private_webhooks));
        sender.clone().map_err(crate::Error::InvalidArgument)
    }

    /// Task `task`'s webhook deliveries, oldest first: each event sent to each of its
    /// template's webhooks, with its status (`pending`, `delivering`, `delivered`, `failed`),
    /// attempts and last error.
    pub async fn webhook_deliveries(
        &self,
        task: crate::TaskId,
    ) -> Result<Vec<crate::webhooks::DeliveryView>> {
        self.store()?.webhook_deliveries(task).await
    }

    /// Sends the due deliveries on a task of its own, unless one runs already (that one looks
    /// again when it is done).
    pub(crate) fn kick_deliveries(&self) {
        let inner = &self.inner;
        inner.deliver_again.store(true, Ordering::SeqCst);
        if inner.delivering.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.delivering.store(false, Ordering::SeqCst);
            return;
        };
        let engine = self.clone();
        runtime.spawn(async move {
            let inner = &engine.inner;
            loop {
                inner.deliver_again.store(false, Ordering::SeqCst);
                if let Err(e) = engine.deliver_webhooks().await {
                    tracing::debug!(error = %e, "delivering webhooks failed; trying again later");
                }
                inner.delivering.store(false, Ordering::SeqCst);
                if !inner.deliver_again.load(Ordering::SeqCst)
                    || inner.delivering.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        });
    }
}
