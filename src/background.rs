//! Background tasks that live as long as the value they serve.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// Runs `tick` on `shared` at `first`, then every `period` (a late tick is delayed, never
/// bunched), until the last strong handle to it is dropped: the task holds only a weak one, so
/// it never keeps the value alive and ends on its own.
pub(crate) async fn tick_while_alive<T, F, Fut>(
    shared: Weak<T>,
    first: Instant,
    period: Duration,
    tick: F,
) where
    F: Fn(Arc<T>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        tick(shared).await;
    }
}

/// [`tick_while_alive`] on its own task, ticking at once.
///
/// # Panics
///
/// Outside a Tokio runtime.
#[cfg(any(feature = "health", feature = "dashboard"))]
pub(crate) fn spawn_every<T, F, Fut>(
    shared: &Arc<T>,
    period: Duration,
    tick: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(tick_while_alive(
        Arc::downgrade(shared),
        Instant::now(),
        period,
        tick,
    ))
}
