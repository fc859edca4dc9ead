//! axum glue: [`TxHandle`] as an extractor.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use super::backend::TxDatabase;
use super::handle::TxHandle;

/// Rejection of the [`TxHandle`] extractor: the route is not behind a
/// [`TxLayer`](super::TxLayer) of that database. Answers `500`: it is a wiring bug.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MissingTxLayer;

impl std::fmt::Display for MissingTxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no transaction handle in the request: the route is not behind a TxLayer")
    }
}

impl std::error::Error for MissingTxLayer {}

impl IntoResponse for MissingTxLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync, DB: TxDatabase> FromRequestParts<S> for TxHandle<DB> {
    type Rejection = MissingTxLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<TxHandle<DB>>()
            .cloned()
            .ok_or(MissingTxLayer)
    }
}
