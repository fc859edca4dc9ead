//! Export to the `metrics` facade with OpenTelemetry semantic-convention names and labels.

use std::cell::RefCell;
use std::collections::HashMap;

use foldhash::fast::RandomState;
use metrics::{Gauge, Histogram, Label, Unit};
use thread_local::ThreadLocal;

use super::registry::{Outcome, Padded, Sample};
use super::route::{METHOD_LABELS, METHODS};

/// `http.server.request.duration`: seconds from the request until the response body finished or
/// was dropped; histogram labelled `http.request.method`, `http.route`,
/// `http.response.status_code` and, on failure, `error.type`.
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
/// `http.server.active_requests`: requests in flight, gauge labelled `http.request.method`.
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http.server.active_requests";
/// `rpc.server.call.duration`: seconds per gRPC call; histogram labelled `rpc.system`,
/// `rpc.service`, `rpc.method`, `rpc.grpc.status_code` and, on failure, `error.type`.
pub const RPC_SERVER_CALL_DURATION: &str = "rpc.server.call.duration";
/// `strata.http.server.time_to_head`: seconds until the response head was ready (no
/// semantic convention exists for it), with the labels of [`HTTP_SERVER_REQUEST_DURATION`].
pub const HTTP_SERVER_TIME_TO_HEAD: &str = "strata.http.server.time_to_head";
/// `strata.http.server.slow_requests`: counter of slow requests, labelled
/// `http.request.method` and `http.route`.
pub const HTTP_SERVER_SLOW_REQUESTS: &str = "strata.http.server.slow_requests";

/// The OpenTelemetry semantic conventions' explicit bucket boundaries (seconds) for
/// `http.server.request.duration` and `rpc.server.call.duration`. Give them to your exporter,
/// for example `PrometheusBuilder::set_buckets_for_metric`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// gRPC status code names, for `error.type`.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    route: u32,
    method: u8,
    status: u16,
    grpc: bool,
    grpc_code: Option<i32>,
    outcome: Outcome,
}

struct Handles {
    duration: Histogram,
    head: Option<Histogram>,
}

#[derive(Default)]
struct Cache {
    handles: HashMap<Key, Handles, RandomState>,
    active: [Option<Gauge>; METHODS],
}

/// Per-thread caches of metric handles, one entry per label set, so recording a request costs a
/// hash lookup and two atomic adds in the recorder rather than a label-set registration.
pub(crate) struct Exporter {
    cache: ThreadLocal<Padded<RefCell<Cache>>>,
}

impl Exporter {
    pub(crate) fn new() -> Self {
        metrics::describe_histogram!(
            HTTP_SERVER_REQUEST_DURATION,
            Unit::Seconds,
            "Duration of HTTP server requests."
        );
        metrics::describe_histogram!(
            HTTP_SERVER_TIME_TO_HEAD,
            Unit::Seconds,
            "Time until the HTTP response head was ready."
        );
        metrics::describe_gauge!(
            HTTP_SERVER_ACTIVE_REQUESTS,
            Unit::Count,
            "Number of active HTTP server requests."
        );
        metrics::describe_histogram!(
            RPC_SERVER_CALL_DURATION,
            Unit::Seconds,
            "Duration of RPC server calls."
        );
        metrics::describe_counter!(
            HTTP_SERVER_SLOW_REQUESTS,
            Unit::Count,
            "HTTP server requests above their slow threshold."
        );
        // The store's, transactions' and purges' figures too, whoever registers them first.
        crate::instruments::describe();
        Self {
            cache: ThreadLocal::new(),
        }
    }

    pub(crate) fn active(&self, method: usize, delta: f64) {
        let mut cache = self.cache.get_or(Default::default).borrow_mut();
        let gauge = cache.active[method].get_or_insert_with(|| {
            metrics::gauge!(HTTP_SERVER_ACTIVE_REQUESTS, "http.request.method" => METHOD_LABELS[method])
        });
        gauge.increment(delta);
    }

    pub(crate) fn slow(&self, route: &str, method: usize) {
        metrics::counter!(
            HTTP_SERVER_SLOW_REQUESTS,
            "http.request.method" => METHOD_LABELS[method],
            "http.route" => route.to_owned()
        )
        .increment(1);
    }

    pub(crate) fn record(&self, route_id: u32, route: &str, method: usize, sample: &Sample) {
        let key = Key {
            route: route_id,
            method: method as u8,
            status: sample.status.map_or(0, |s| s.as_u16()),
            grpc: sample.grpc,
            grpc_code: sample.grpc_code,
            outcome: sample.outcome,
        };
        let mut cache = self.cache.get_or(Default::default).borrow_mut();
        let handles = cache
            .handles
            .entry(key)
            .or_insert_with(|| register(route, method, sample));
        handles.duration.record(sample.total.as_secs_f64());
        if let (Some(head), Some(h)) = (sample.head, &handles.head) {
            h.record(head.as_secs_f64());
        }
    }
}

fn error_type(sample: &Sample) -> Option<String> {
    match sample.outcome {
        Outcome::Ok => None,
        Outcome::Cancelled => Some("cancelled".to_owned()),
        Outcome::ServiceError => Some("_OTHER".to_owned()),
        Outcome::ServerError => Some(
            sample
                .status
                .map_or_else(|| "_OTHER".to_owned(), |s| s.as_str().to_owned()),
        ),
        Outcome::GrpcError => Some(grpc_code_name(sample.grpc_code).to_owned()),
    }
}

fn grpc_code_name(code: Option<i32>) -> &'static str {
    code.and_then(|c| usize::try_from(c).ok())
        .and_then(|c| GRPC_CODES.get(c).copied())
        .unwrap_or("_OTHER")
}

#[cold]
fn register(route: &str, method: usize, sample: &Sample) -> Handles {
    let error = error_type(sample);
    if sample.grpc {
        let (service, rpc_method) = split_grpc(route);
        let mut labels = vec![
            Label::new("rpc.system", "grpc"),
            Label::new("rpc.service", service.to_owned()),
            Label::new("rpc.method", rpc_method.to_owned()),
        ];
        // A call cancelled before any status has no status code.
        if let Some(code) = sample.grpc_code {
            labels.push(Label::new("rpc.grpc.status_code", code.to_string()));
        }
        if let Some(e) = error {
            labels.push(Label::new("error.type", e));
        }
        return Handles {
            duration: metrics::histogram!(RPC_SERVER_CALL_DURATION, labels),
            head: None,
        };
    }
    let mut labels = vec![
        Label::new("http.request.method", METHOD_LABELS[method]),
        Label::new("http.route", route.to_owned()),
    ];
    if let Some(status) = sample.status {
        labels.push(Label::new(
            "http.response.status_code",
            status.as_str().to_owned(),
        ));
    }
    if let Some(e) = error {
        labels.push(Label::new("error.type", e));
    }
    Handles {
        head: Some(metrics::histogram!(
            HTTP_SERVER_TIME_TO_HEAD,
            labels.clone()
        )),
        duration: metrics::histogram!(HTTP_SERVER_REQUEST_DURATION, labels),
    }
}

/// `/pkg.Service/Method` into (`pkg.Service`, `Method`).
fn split_grpc(route: &str) -> (&str, &str) {
    route
        .strip_prefix('/')
        .and_then(|r| r.split_once('/'))
        .unwrap_or((route, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_names() {
        assert_eq!(split_grpc("/pkg.Svc/Call"), ("pkg.Svc", "Call"));
        assert_eq!(split_grpc("_UNMATCHED"), ("_UNMATCHED", ""));
        assert_eq!(grpc_code_name(Some(13)), "INTERNAL");
        assert_eq!(grpc_code_name(Some(99)), "_OTHER");
    }
}
