//! [`InvalidateFuture`]: waits for the inner response, then purges (or defers the purge until
//! after commit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::header::{self, CACHE_GROUP_INVALIDATION, Invalidation};
use super::layer::{Counters, InvalidateLayer, run};
use crate::purge::rules::Targets;

/// What a request may purge once its response is known.
pub(crate) struct Pending {
    pub layer: InvalidateLayer,
    pub targets: Targets,
    pub fired: u64,
    pub unsafe_method: bool,
    pub origin: String,
    #[cfg(feature = "sqlx")]
    pub after_commit: Option<crate::tx::AfterCommit>,
}

/// The purge under way before the response is handed back (boxed: it awaits the store, and
/// only responses that purge pay for it).
type PurgeFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project! {
    /// The response future of [`Invalidate`](super::Invalidate).
    pub struct InvalidateFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Calling {
            #[pin]
            future: F,
            pending: Unresolved,
        },
        Purging {
            purge: PurgeFuture,
            response: Option<Response<B>>,
        },
    }
}

impl<F, B> fmt::Debug for InvalidateFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidateFuture").finish_non_exhaustive()
    }
}

impl<F, B> InvalidateFuture<F, B> {
    pub(crate) fn passthrough(future: F) -> Self {
        InvalidateFuture {
            state: State::Calling {
                future,
                pending: Unresolved(None),
            },
        }
    }

    pub(crate) fn new(future: F, pending: Pending) -> Self {
        InvalidateFuture {
            state: State::Calling {
                future,
                pending: Unresolved(Some(Box::new(pending))),
            },
        }
    }
}

impl<F, B, E> Future for InvalidateFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Calling { future, pending } => {
                    // An error leaves `pending` unresolved: its drop purges.
                    let mut response = ready!(future.poll(cx))?;
                    let Some(pending) = pending.0.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    let Some(purge) = decide(*pending, &mut response) else {
                        return Poll::Ready(Ok(response));
                    };
                    self.as_mut().project().state.set(State::Purging {
                        purge,
                        response: Some(response),
                    });
                }
                StateProj::Purging { purge, response } => {
                    ready!(purge.as_mut().poll(cx));
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// A request's purge whose response is not known yet. Dropped so (the client hung up and the
/// response future with it, or the service failed), the outcome is unknown and the write may
/// have happened: the rules' own targets are purged as if it had succeeded, in the
/// background. What only a response names (`Cache-Group-Invalidation`, an `Invalidation`
/// extension) is not known, so not purged.
pub(crate) struct Unresolved(Option<Box<Pending>>);

impl Drop for Unresolved {
    fn drop(&mut self) {
        let Some(pending) = self.0.take() else {
            return;
        };
        let Pending {
            layer,
            targets,
            fired,
            origin,
            ..
        } = *pending;
        if targets.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                origin,
                "invalidation: request dropped outside a runtime; not purged"
            );
            return;
        };
        let stats = layer.stats.clone();
        runtime.spawn(async move {
            Counters::add(&stats.rule_firings, fired);
            run(layer.purger, targets, stats, origin).await;
        });
    }
}

/// Gathers what a successful response purges. Returns the purge to await before answering, or
/// `None` when there is nothing to purge now (nothing at all, or deferred after commit).
fn decide<B>(pending: Pending, response: &mut Response<B>) -> Option<PurgeFuture> {
    let Pending {
        layer,
        mut targets,
        fired,
        unsafe_method,
        origin,
        #[cfg(feature = "sqlx")]
        after_commit,
    } = pending;
    if !(layer.success)(response.status()) {
        return None;
    }
    let mut from_header = false;
    let mut from_extension = false;
    if unsafe_method {
        if layer.group_header
            && let Some(groups) = header::groups(response.headers())
        {
            if layer.strip_group_header {
                response.headers_mut().remove(&CACHE_GROUP_INVALIDATION);
            }
            from_header = !groups.is_empty();
            groups.into_iter().for_each(|g| targets.add_tag(g));
        }
        if let Some(extra) = response.extensions_mut().remove::<Invalidation>() {
            from_extension = true;
            extra.tags.into_iter().for_each(|t| targets.add_tag(t));
            extra.keys.into_iter().for_each(|k| targets.add_key(k));
        }
    }
    if targets.is_empty() {
        return None;
    }
    let stats = layer.stats.clone();
    let purger = layer.purger.clone();
    // Counted when the purge runs: a deferred purge whose transaction then fails to commit
    // fired nothing.
    let purge = async move {
        Counters::add(&stats.rule_firings, fired);
        Counters::add(&stats.header_invalidations, u64::from(from_header));
        Counters::add(&stats.extension_invalidations, u64::from(from_extension));
        run(purger, targets, stats, origin).await;
    };
    #[cfg(feature = "sqlx")]
    if let Some(after_commit) = after_commit {
        // The transaction layer runs this after COMMIT and before the response leaves; never
        // on rollback.
        Counters::add(&layer.stats.after_commit, 1);
        after_commit.register(move || purge);
        return None;
    }
    Some(Box::pin(purge))
}
