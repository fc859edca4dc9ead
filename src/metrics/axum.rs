//! axum glue: the route template axum matched.

use http::Extensions;

/// The route template of axum's `MatchedPath`, present when the layer runs after routing
/// (added with `Router::layer` or `Router::route_layer`).
pub(crate) fn matched_path(extensions: &Extensions) -> Option<&str> {
    extensions
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}
