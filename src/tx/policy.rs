//! When to commit: [`CommitPolicy`], the default for HTTP and gRPC, and the per-response
//! override [`Verdict`].

use http::{HeaderMap, StatusCode};

/// Commit or roll back. Also the per-response override: a handler that inserts a `Verdict`
/// into its response extensions decides for that response, whatever the policy says
/// (commit this `409`, roll back this `200`).
///
/// ```
/// use tower_strata::tx::Verdict;
///
/// let mut response = http::Response::new(());
/// *response.status_mut() = http::StatusCode::CONFLICT;
/// response.extensions_mut().insert(Verdict::Commit); // keep the audit row written
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Commit the transaction.
    Commit,
    /// Roll it back.
    Rollback,
}

/// Decides from a response whether its transaction commits.
///
/// Closures `Fn(StatusCode, &HeaderMap) -> Verdict` are policies too. The trait is
/// object-safe (`Arc<dyn CommitPolicy>` works).
pub trait CommitPolicy: Send + Sync + 'static {
    /// The verdict from the response head, or `None` to decide from the trailers once the
    /// body has been sent (gRPC answers with `grpc-status` in its trailers).
    fn on_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Verdict>;

    /// The verdict from the trailers (`None` when the body ended without any); called only
    /// after [`on_response`](CommitPolicy::on_response) returned `None`. The default
    /// commits when `grpc-status` is `0`.
    fn on_trailers(&self, trailers: Option<&HeaderMap>) -> Verdict {
        grpc_verdict(trailers).unwrap_or(Verdict::Rollback)
    }
}

fn grpc_verdict(headers: Option<&HeaderMap>) -> Option<Verdict> {
    let status = headers?.get("grpc-status")?;
    Some(if status.as_bytes() == b"0" {
        Verdict::Commit
    } else {
        Verdict::Rollback
    })
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The default policy: for gRPC (`content-type: application/grpc*`) commit when
/// `grpc-status` is `0`, read from the headers or else the trailers; for anything else commit
/// when the status is below 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy;

impl CommitPolicy for DefaultPolicy {
    fn on_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Verdict> {
        if let Some(v) = grpc_verdict(Some(headers)) {
            return Some(v);
        }
        if is_grpc(headers) {
            return if status.is_success() {
                None
            } else {
                Some(Verdict::Rollback)
            };
        }
        Some(if status.as_u16() < 400 {
            Verdict::Commit
        } else {
            Verdict::Rollback
        })
    }
}

impl<F> CommitPolicy for F
where
    F: Fn(StatusCode, &HeaderMap) -> Verdict + Send + Sync + 'static,
{
    fn on_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Verdict> {
        Some(self(status, headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn http_statuses() {
        for (status, verdict) in [
            (StatusCode::OK, Verdict::Commit),
            (StatusCode::FOUND, Verdict::Commit),
            (StatusCode::NOT_FOUND, Verdict::Rollback),
            (StatusCode::INTERNAL_SERVER_ERROR, Verdict::Rollback),
        ] {
            let got = DefaultPolicy.on_response(status, &HeaderMap::new());
            assert_eq!(got, Some(verdict), "{status}");
        }
    }

    #[test]
    fn grpc_status_in_headers_or_trailers() {
        let p = DefaultPolicy;
        let grpc = ("content-type", "application/grpc");
        // A `grpc-status` in the headers (a trailers-only answer) decides; without one, the
        // trailers do.
        for (pairs, verdict) in [
            (&[grpc][..], None),
            (&[grpc, ("grpc-status", "5")], Some(Verdict::Rollback)),
            (&[grpc, ("grpc-status", "0")], Some(Verdict::Commit)),
        ] {
            let got = p.on_response(StatusCode::OK, &headers(pairs));
            assert_eq!(got, verdict, "{pairs:?}");
        }
        for (status, verdict) in [
            (Some("0"), Verdict::Commit),
            (Some("13"), Verdict::Rollback),
            (None, Verdict::Rollback),
        ] {
            let trailers = status.map(|s| headers(&[("grpc-status", s)]));
            assert_eq!(p.on_trailers(trailers.as_ref()), verdict, "{status:?}");
        }
    }

    #[test]
    fn closures_and_trait_objects() {
        let p: Arc<dyn CommitPolicy> = Arc::new(|s: StatusCode, _: &HeaderMap| {
            if s.is_server_error() {
                Verdict::Rollback
            } else {
                Verdict::Commit
            }
        });
        let h = HeaderMap::new();
        assert_eq!(
            p.on_response(StatusCode::CONFLICT, &h),
            Some(Verdict::Commit)
        );
        assert_eq!(
            p.on_response(StatusCode::BAD_GATEWAY, &h),
            Some(Verdict::Rollback)
        );
    }
}
