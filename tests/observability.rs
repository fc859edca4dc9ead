//! The spans of store calls, purges and a replayed transaction: names, parents and
//! OpenTelemetry-style fields, captured by a small `tracing_subscriber` layer. Alone in its
//! binary: it installs the global subscriber (the transaction layer commits on a task of its
//! own, which a thread-local subscriber could miss).
#![cfg(all(
    feature = "memory",
    feature = "redis",
    feature = "purge",
    feature = "postgres"
))]

mod support;

use support::observe;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Instrument, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One span as captured: its name, its parent's index in the capture, and its fields as
/// strings (recorded at creation or later).
#[derive(Clone, Debug)]
struct Captured {
    name: &'static str,
    parent: Option<usize>,
    fields: HashMap<&'static str, String>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Captured>>>,
}

/// Where each span is in the capture, kept in the span's extensions (ids are reused).
struct Index(usize);

struct Fields<'a>(&'a mut HashMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("the registry has it");
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Index>().map(|i| i.0));
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push(Captured {
            name: attrs.metadata().name(),
            parent,
            fields,
        });
        span.extensions_mut().insert(Index(spans.len() - 1));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(index) = span.extensions().get::<Index>().map(|i| i.0) else {
            return;
        };
        values.record(&mut Fields(&mut self.spans.lock().unwrap()[index].fields));
    }
}

#[tokio::test]
async fn store_calls_purges_and_a_replayed_transaction_are_spans_with_their_fields() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();

    let redis = observe::redis_store();
    observe::store_calls(&redis)
        .instrument(tracing::info_span!("store request"))
        .await;
    observe::purges(&redis)
        .instrument(tracing::info_span!("purge request"))
        .await;
    let attempts = observe::transactions()
        .instrument(tracing::info_span!("tx requests"))
        .await;
    assert_eq!(attempts, 3);
    cache_requests().await;

    let spans = capture.spans.lock().unwrap().clone();
    let index_of = |name: &str| spans.iter().position(|s| s.name == name).unwrap();
    let children = |parent: usize, name: &str| -> Vec<&Captured> {
        spans
            .iter()
            .filter(|s| s.parent == Some(parent) && s.name == name)
            .collect()
    };

    // Store calls: a child span each, with OpenTelemetry's `db.*` fields and the outcome.
    let calls = children(index_of("store request"), "store.call");
    let ops: Vec<&str> = calls
        .iter()
        .map(|c| c.field("db.operation.name").unwrap())
        .collect();
    // The first read of a tagged entry also reads its tag's purge marks, not yet known here.
    assert_eq!(
        ops,
        ["set", "get", "get marks", "get", "delete"],
        "{calls:#?}"
    );
    for call in &calls {
        assert_eq!(call.field("db.system"), Some("redis"));
        assert_eq!(call.field("store.backend"), Some("redis"));
        assert_eq!(call.field("store.result"), Some("ok"));
        assert_eq!(call.field("error.type"), None);
    }

    // Purges: what each purged, with the store calls it made beneath it.
    let purges = children(index_of("purge request"), "purge");
    let summary: Vec<(&str, &str, &str)> = purges
        .iter()
        .map(|p| {
            (
                p.field("purge.kind").unwrap(),
                p.field("purge.mode").unwrap(),
                p.field("purge.target").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("key", "hard", "product:1"),
            ("tag", "soft", "products"),
            ("tag", "hard", "products"),
            ("pattern", "hard", "product:*"),
        ],
        "{purges:#?}"
    );
    // How many each purged (a tag's count is its index's size on Redis, the pattern's what
    // the tag purges' background clean-up left): a number on every span, 1 for the key.
    let entries: Vec<u64> = purges
        .iter()
        .map(|p| p.field("purge.entries").unwrap().parse().unwrap())
        .collect();
    assert_eq!(entries[0], 1);
    let first_purge = spans.iter().position(|s| s.name == "purge").unwrap();
    assert!(
        !children(first_purge, "store.call").is_empty(),
        "the purge's Redis calls are its children"
    );

    // The transaction layer: an attempt per try, the replayed one with its reason.
    let attempts = children(index_of("tx requests"), "tx.attempt");
    let summary: Vec<(&str, &str, Option<&str>)> = attempts
        .iter()
        .map(|a| {
            (
                a.field("tx.attempt").unwrap(),
                a.field("tx.result").unwrap(),
                a.field("tx.retry.reason"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("1", "retry", Some("serialization_failure")),
            ("2", "commit", None),
            ("1", "rollback", None),
        ],
        "{attempts:#?}"
    );
    for attempt in &attempts {
        assert_eq!(attempt.field("db.system"), Some("postgresql"));
        assert_eq!(attempt.field("db.operation.name"), Some("transaction"));
        assert_eq!(attempt.field("tx.mode"), Some("read-write"));
    }

    // The cache: each request's span carries its outcome, key hash and whether it was
    // stored; the lookup, the upstream call and the revalidation are spans beneath it.
    let requests: Vec<usize> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == "cache request")
        .map(|(i, _)| i)
        .collect();
    let outcome = |i: usize| {
        let s = &spans[i];
        (
            s.field("step").unwrap(),
            s.field("cache.outcome").unwrap_or("-"),
            s.field("cache.reason").unwrap_or("-"),
            s.field("cache.stored").unwrap_or("-"),
        )
    };
    let outcomes: Vec<_> = requests.iter().map(|&i| outcome(i)).collect();
    assert_eq!(
        outcomes,
        [
            ("miss", "miss", "stored", "true"),
            ("hit", "hit", "fresh", "-"),
            ("stale miss", "miss", "stored", "true"),
            ("revalidation", "miss", "revalidated", "-"),
        ],
        "{spans:#?}"
    );
    let hashes: Vec<&str> = requests
        .iter()
        .map(|&i| spans[i].field("cache.key_hash").unwrap())
        .collect();
    assert!(hashes.iter().all(|h| h.len() == 16), "{hashes:?}");
    assert_eq!(hashes[0], hashes[1], "one URL, one key");
    assert_ne!(hashes[1], hashes[2]);
    let names = |parent: usize| -> Vec<&str> {
        spans
            .iter()
            .filter(|s| s.parent == Some(parent))
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(names(requests[0]), ["cache.lookup", "cache.upstream"]);
    assert_eq!(names(requests[1]), Vec::<&str>::new(), "a hit is no span");
    assert_eq!(names(requests[3]), ["cache.lookup", "cache.revalidate"]);
    let revalidate = spans
        .iter()
        .position(|s| s.name == "cache.revalidate")
        .unwrap();
    assert_eq!(names(revalidate), ["cache.upstream"]);
}

/// A miss, a hit, a miss stored stale with its validators and its revalidation, each request
/// in a span that declares the cache's fields (as a `TraceLayer` span would).
async fn cache_requests() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt};
    use tower_strata::cache::CacheLayer;
    use tower_strata::store::MemoryStore;

    let origin = tower::service_fn(|request: http::Request<Full<Bytes>>| async move {
        let mut response = http::Response::new(Full::new(Bytes::from_static(b"page")));
        if request.headers().contains_key("if-none-match") {
            *response.status_mut() = http::StatusCode::NOT_MODIFIED;
        }
        let headers = response.headers_mut();
        headers.insert("etag", "\"v1\"".parse().unwrap());
        if request.uri().path() == "/stale" {
            // Stale on arrival: stored for its validators, revalidated when next asked.
            headers.insert("cache-control", "max-age=1".parse().unwrap());
            headers.insert("age", "2".parse().unwrap());
        } else {
            headers.insert("cache-control", "max-age=60".parse().unwrap());
        }
        Ok::<_, std::convert::Infallible>(response)
    });
    let cache = ServiceBuilder::new()
        .layer(CacheLayer::new(MemoryStore::new(1 << 20)))
        .service(origin);
    for (path, step) in [
        ("/fresh", "miss"),
        ("/fresh", "hit"),
        ("/stale", "stale miss"),
        ("/stale", "revalidation"),
    ] {
        let empty = tracing::field::Empty;
        let span = tracing::info_span!(
            "cache request",
            step,
            cache.outcome = empty,
            cache.reason = empty,
            cache.key_hash = empty,
            cache.stored = empty,
            cache.not_stored = empty,
        );
        let request = http::Request::get(format!("http://shop.example{path}"))
            .body(Full::default())
            .unwrap();
        let response = cache
            .clone()
            .oneshot(request)
            .instrument(span)
            .await
            .unwrap();
        let _ = response.into_body().collect().await;
        // The store write follows the body.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
