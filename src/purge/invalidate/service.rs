//! [`Invalidate`]: the service made by [`InvalidateLayer`](super::InvalidateLayer).

use std::fmt;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use super::future::{InvalidateFuture, Pending};
use super::layer::InvalidateLayer;
use crate::purge::rules::Targets;

/// The service made by [`InvalidateLayer`]; see the [purge module](crate::purge#invalidation-after-writes).
#[derive(Clone)]
pub struct Invalidate<S> {
    pub(crate) inner: S,
    pub(crate) layer: InvalidateLayer,
}

impl<S> Invalidate<S> {
    inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for Invalidate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidate")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

/// RFC 9110 §9.2.1: everything but these may change state.
pub(crate) fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

impl<S, B, RB> Service<Request<B>> for Invalidate<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = InvalidateFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = request.method();
        let unsafe_method = is_unsafe(method);
        let mut targets = Targets::default();
        let mut fired = 0;
        for rule in self.layer.rules.iter() {
            if rule.apply(method, request.uri().path(), &mut targets) {
                fired += 1;
            }
        }
        if targets.is_empty() && !unsafe_method {
            // A safe request no rule names: nothing to do, nothing to allocate.
            return InvalidateFuture::passthrough(self.inner.call(request));
        }
        #[cfg(feature = "sqlx")]
        let after_commit = request
            .extensions()
            .get::<crate::tx::AfterCommit>()
            .cloned();
        let pending = Pending {
            layer: self.layer.clone(),
            targets,
            fired,
            unsafe_method,
            origin: format!("{} {}", request.method(), request.uri().path()),
            #[cfg(feature = "sqlx")]
            after_commit,
        };
        InvalidateFuture::new(self.inner.call(request), pending)
    }
}
