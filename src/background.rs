//! Background tasks that live as long as the value they serve.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `tick` on `shared` every `period` (a late tick is delayed, never bunched) until the
/// last strong handle to it is dropped: the task holds only a weak one, so it never keeps the
/// value alive and ends on its own.
///
/// # Panics
///
/// Outside a Tokio runtime.
pub(crate) fn spawn_every<T, F, Fut>(
    shared: &Arc<T>,
    period: Duration,
    tick: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let weak: Weak<T> = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = weak.upgrade() else { break };
            tick(shared).await;
        }
    })
}
