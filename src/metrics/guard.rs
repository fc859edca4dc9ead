//! The per-request guard: counts the request in flight and records it exactly once when dropped.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::registry::{Handle, Outcome, Sample, UNMATCHED};

/// gRPC `UNIMPLEMENTED`: the method does not exist, so its path is not a route.
const GRPC_UNIMPLEMENTED: i32 = 12;

/// Whether a gRPC status code is a server error (OpenTelemetry's list for servers).
pub(crate) fn is_grpc_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Reads `grpc-status` from headers or trailers.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The route of a request: known, or (gRPC) a path to add to the table only once the call
/// proved not to be `UNIMPLEMENTED`, so unknown methods never take a label slot.
#[derive(Debug)]
pub(crate) enum Route {
    Id(u32),
    /// A gRPC path not yet seen answered by a gRPC service: labelled `grpc_path` once the
    /// response shows one did, else `otherwise` (the declared route, or unmatched).
    Pending {
        grpc_path: Box<str>,
        otherwise: u32,
    },
}

/// Lives from the call until the response body finished or was dropped; moved from the future
/// into the body. Its `Drop` decrements the in-flight count and records the request, so no path
/// (panic, cancellation, error) can leak an in-flight request.
#[derive(Debug)]
pub(crate) struct Guard {
    handle: Arc<Handle>,
    route: Route,
    method: usize,
    grpc: bool,
    start: Instant,
    head: Option<Duration>,
    status: Option<StatusCode>,
    grpc_code: Option<i32>,
    finished: bool,
    failed: bool,
    /// When the response finished, if known before the drop (saves a clock read).
    end: Option<Instant>,
    /// Set while the inner future or body is being polled: a guard dropped with it set was
    /// dropped by a panic that unwound out of that poll.
    pub(crate) in_poll: bool,
}

impl Guard {
    pub(crate) fn start(handle: Arc<Handle>, route: Route, method: usize, grpc: bool) -> Self {
        handle.shared.request_started(method);
        Self {
            handle,
            route,
            method,
            grpc,
            start: Instant::now(),
            head: None,
            status: None,
            grpc_code: None,
            finished: false,
            failed: false,
            end: None,
            in_poll: false,
        }
    }

    /// The response head is ready (at `now`).
    pub(crate) fn head(&mut self, status: StatusCode, headers: &HeaderMap, now: Instant) {
        self.head = Some(now.saturating_duration_since(self.start));
        self.status = Some(status);
        // A gRPC call is one a gRPC service answered (its responses, errors included, carry a
        // gRPC content type): a client's `content-type` alone makes no gRPC route or status.
        self.grpc = self.grpc && super::route::is_grpc(headers);
        // Trailers-only responses carry the status in the headers.
        if self.grpc
            && let Some(code) = grpc_status(headers)
        {
            self.grpc_code = Some(code);
        }
    }

    /// Trailers arrived (gRPC status at the end of a stream).
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        if self.grpc
            && let Some(code) = grpc_status(trailers)
        {
            self.grpc_code = Some(code);
        }
    }

    /// The response finished normally; the guard records when dropped.
    pub(crate) fn finished(&mut self) {
        self.finished = true;
    }

    /// The response finished normally at `now` (a head with an empty body).
    pub(crate) fn finished_at(&mut self, now: Instant) {
        self.finished = true;
        self.end = Some(now);
    }

    /// The inner service or the body failed.
    pub(crate) fn failed(&mut self) {
        self.finished = true;
        self.failed = true;
    }

    fn outcome(&mut self) -> Outcome {
        if self.failed {
            return Outcome::ServiceError;
        }
        if !self.finished {
            // Dropped after a panic in the handler or the body (during the unwinding, or after
            // something caught it): a server error, not the client's doing.
            if self.in_poll || std::thread::panicking() {
                return Outcome::ServiceError;
            }
            return Outcome::Cancelled;
        }
        if self.status.is_some_and(|s| s.is_server_error()) {
            return Outcome::ServerError;
        }
        if self.grpc {
            // A finished gRPC response without a status is a protocol error: UNKNOWN.
            let code = *self.grpc_code.get_or_insert(2);
            if is_grpc_server_error(code) {
                return Outcome::GrpcError;
            }
        }
        Outcome::Ok
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let now = self.end.unwrap_or_else(Instant::now);
        let outcome = self.outcome();
        // Unknown gRPC methods would otherwise put arbitrary client paths into labels.
        let route = if self.grpc_code == Some(GRPC_UNIMPLEMENTED) {
            UNMATCHED
        } else {
            match &self.route {
                Route::Id(id) => *id,
                Route::Pending {
                    grpc_path,
                    otherwise,
                } => {
                    if self.grpc && self.status.is_some() {
                        self.handle.shared.route_id(grpc_path)
                    } else {
                        *otherwise
                    }
                }
            }
        };
        let sample = Sample {
            grpc: self.grpc,
            status: self.status,
            grpc_code: self.grpc_code,
            outcome,
            head: self.head,
            total: now.saturating_duration_since(self.start),
        };
        self.handle.shared.finish(route, self.method, sample, now);
    }
}
