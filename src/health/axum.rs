//! axum glue: a router with both endpoints.

use axum::Router;

use super::registry::Health;

impl Health {
    /// An axum router serving `/health` (liveness) and `/health/ready` (readiness), to
    /// `merge` into the app's router.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route_service("/health", self.liveness_service())
            .route_service("/health/ready", self.readiness_service())
    }
}
