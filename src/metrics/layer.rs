//! [`MetricsLayer`]: configuration shared by every [`Metrics`] service it makes.

use std::sync::Arc;

use http::Request;
use tower_layer::Layer;

use super::guard::{Guard, Route};
use super::registry::{MetricsRegistry, UNMATCHED};
use super::route::{RequestInfo, RouteLabel, declared_route, grpc_route, is_grpc, method_index};
use super::service::Metrics;

/// Records every request into a [`MetricsRegistry`] (and the `metrics` facade). Makes
/// [`Metrics`] services.
///
/// See [the module docs](crate::metrics) for what is recorded, how routes are labelled, and
/// examples.
#[derive(Clone)]
pub struct MetricsLayer {
    pub(crate) state: Arc<LayerState>,
}

#[derive(Clone)]
pub(crate) struct LayerState {
    pub(crate) registry: MetricsRegistry,
    excluded: Vec<String>,
    excluded_prefixes: Vec<String>,
    route_label: Option<Arc<dyn RouteLabel>>,
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("registry", &self.state.registry)
            .field("excluded", &self.state.excluded)
            .field("excluded_prefixes", &self.state.excluded_prefixes)
            .field("route_label", &self.state.route_label.is_some())
            .finish()
    }
}

impl MetricsLayer {
    /// A layer recording into `registry`.
    pub fn new(registry: MetricsRegistry) -> Self {
        Self {
            state: Arc::new(LayerState {
                registry,
                excluded: Vec::new(),
                excluded_prefixes: Vec::new(),
                route_label: None,
            }),
        }
    }

    /// A layer with a new default registry, and that registry (to read snapshots from).
    pub fn pair() -> (Self, MetricsRegistry) {
        let registry = MetricsRegistry::new();
        (Self::new(registry.clone()), registry)
    }

    /// The registry this layer records into.
    pub fn registry(&self) -> &MetricsRegistry {
        &self.state.registry
    }

    /// Requests to exactly this path are not measured (for example `/health`, `/metrics`).
    pub fn exclude_path(mut self, path: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.state).excluded.push(path.into());
        self
    }

    /// Requests whose path starts with this prefix are not measured.
    pub fn exclude_prefix(mut self, prefix: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.state)
            .excluded_prefixes
            .push(prefix.into());
        self
    }

    /// The route label of requests that are neither gRPC calls nor matched by an axum route
    /// (for example under plain hyper). It must return route templates from a bounded set.
    pub fn route_label(mut self, label: impl RouteLabel) -> Self {
        Arc::make_mut(&mut self.state).route_label = Some(Arc::new(label));
        self
    }
}

impl LayerState {
    /// Starts measuring a request, unless its path is excluded.
    pub(crate) fn start<B>(&self, req: &Request<B>) -> Option<Guard> {
        let path = req.uri().path();
        if self.excluded.iter().any(|p| p == path)
            || self.excluded_prefixes.iter().any(|p| path.starts_with(p))
        {
            return None;
        }
        let grpc = is_grpc(req.headers());
        let info = RequestInfo::new(req);
        let declared = declared_route(&info).or_else(|| {
            self.route_label
                .as_ref()
                .and_then(|label| label.route_label(&info))
        });
        let shared = self.registry.shared();
        let declared = declared.map_or(UNMATCHED, |route| shared.route_id(&route));
        // A gRPC path is the client's spelling until a gRPC service answers it (a response
        // with a gRPC content type, not UNIMPLEMENTED): only then does it become a label.
        let route = match grpc_route(path).filter(|_| grpc) {
            Some(path) => match shared.cached_route_id(path) {
                Some(id) => Route::Id(id),
                None => Route::Pending {
                    grpc_path: path.into(),
                    otherwise: declared,
                },
            },
            None => Route::Id(declared),
        };
        Some(Guard::start(
            self.registry.handle(),
            route,
            method_index(req.method()),
            grpc,
        ))
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics {
            inner,
            state: self.state.clone(),
        }
    }
}
