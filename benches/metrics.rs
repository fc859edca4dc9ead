//! Cost of the metrics layer per request against the bare service, and recording throughput on
//! two threads against one.
//!
//! `cargo bench --bench metrics -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_strata::metrics::{MetricsLayer, MetricsRegistry};

fn registry(export: bool) -> MetricsRegistry {
    MetricsRegistry::builder().export(export).build().unwrap()
}

/// A trivial axum app, with or without the layer.
fn app(layer: Option<MetricsLayer>) -> Router {
    let router = Router::new().route("/users/{id}", get(|| async { "ok" }));
    match layer {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

fn layer_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("layer_overhead_axum");
    let cases = [
        ("bare", app(None)),
        ("metrics", app(Some(MetricsLayer::new(registry(false))))),
        (
            "metrics_export_noop_recorder",
            app(Some(MetricsLayer::new(registry(true)))),
        ),
    ];
    for (name, router) in cases {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let router = router.clone();
                async move {
                    let req = Request::get("/users/42").body(Body::empty()).unwrap();
                    let res = router.oneshot(req).await.unwrap();
                    black_box(res.into_body().collect().await.unwrap());
                }
            })
        });
    }
    group.finish();

    // Through a real HTTP/1.1 server on loopback, one keep-alive connection: the cost a client
    // sees.
    let mut group = c.benchmark_group("layer_overhead_http_loopback");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for (name, router) in [
        ("bare", app(None)),
        ("metrics", app(Some(MetricsLayer::new(registry(false))))),
    ] {
        let listener = multi
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        multi.spawn(async move { axum::serve(listener, router).await });
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 4096];
        group.bench_function(name, |b| {
            b.iter(|| black_box(http_get(&mut conn, &mut buf)))
        });
    }
    group.finish();
    drop(multi);

    // The same with a plain `service_fn`: the smallest possible handler, no routing.
    let mut group = c.benchmark_group("layer_overhead_service_fn");
    let handler =
        |_req: Request<String>| async { Ok::<_, Infallible>(Response::new(String::from("ok"))) };
    let label = |_: &tower_strata::metrics::RequestInfo<'_>| Some("/users/{id}");
    let mut bare = ServiceBuilder::new().service_fn(handler);
    let mut layered = ServiceBuilder::new()
        .layer(MetricsLayer::new(registry(false)).route_label(label))
        .service_fn(handler);
    group.bench_function("bare", |b| {
        b.iter(|| {
            let req = Request::get("/users/42").body(String::new()).unwrap();
            let res = bare.call(req).now_or_never().unwrap().unwrap();
            black_box(res);
        })
    });
    group.bench_function("metrics", |b| {
        b.iter(|| {
            let req = Request::get("/users/42").body(String::new()).unwrap();
            let res = layered.call(req).now_or_never().unwrap().unwrap();
            black_box(res);
        })
    });
    group.finish();
}

/// The export to a real Prometheus recorder: the layer with export on against export off, and a
/// cached handle against looking the label set up on every record (what the handle cache saves).
fn export_cost(c: &mut Criterion) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // Upkeep drains the recorded samples, as a server's upkeep task would.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upkeep = {
        let (handle, stop) = (handle.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                handle.run_upkeep();
            }
        })
    };
    metrics::with_local_recorder(&recorder, || {
        let mut group = c.benchmark_group("export_prometheus");
        let label = |_: &tower_strata::metrics::RequestInfo<'_>| Some("/users/{id}");
        let handler = |_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        };
        for (name, export) in [("layer_export_off", false), ("layer_export_on", true)] {
            let mut svc = ServiceBuilder::new()
                .layer(MetricsLayer::new(registry(export)).route_label(label))
                .service_fn(handler);
            group.bench_function(name, |b| {
                b.iter(|| {
                    let req = Request::get("/users/42").body(String::new()).unwrap();
                    black_box(svc.call(req).now_or_never().unwrap().unwrap());
                })
            });
        }
        let labels = [
            ("http.request.method", "GET"),
            ("http.route", "/users/{id}"),
            ("http.response.status_code", "200"),
        ];
        let cached = metrics::histogram!("bench.duration", &labels);
        group.bench_function("record_cached_handle", |b| {
            b.iter(|| cached.record(black_box(0.001)))
        });
        group.bench_function("record_label_lookup", |b| {
            b.iter(|| metrics::histogram!("bench.duration", &labels).record(black_box(0.001)))
        });
        group.finish();
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    upkeep.join().unwrap();
}

/// One `GET /users/42` on a keep-alive connection; returns the body length.
fn http_get(conn: &mut std::net::TcpStream, buf: &mut [u8]) -> usize {
    use std::io::{Read, Write};
    conn.write_all(b"GET /users/42 HTTP/1.1\r\nhost: bench\r\n\r\n")
        .unwrap();
    let mut filled = 0;
    loop {
        let n = conn.read(&mut buf[filled..]).unwrap();
        assert!(n > 0, "connection closed");
        filled += n;
        let text = &buf[..filled];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&text[..end])
                .unwrap()
                .to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap();
            if filled >= end + 4 + len {
                return len;
            }
        }
    }
}

/// Runs `per_thread` iterations of a worker made by `make` on each of `threads` threads at once;
/// returns the slowest thread's time.
fn on_threads<W: FnMut(u64)>(
    threads: usize,
    per_thread: u64,
    make: impl Fn() -> W + Sync,
) -> Duration {
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut work = make();
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..per_thread {
                        work(i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn recording_scales(c: &mut Criterion) {
    // Registry recording alone.
    let mut group = c.benchmark_group("record_throughput");
    for threads in [1usize, 2] {
        let reg = registry(false);
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                on_threads(t, iters, || {
                    |i| {
                        reg.record(
                            "/users/{id}",
                            &Method::GET,
                            StatusCode::OK,
                            Duration::from_nanos(1_000 + (i % 4096) * 250),
                        )
                    }
                })
            })
        });
    }
    group.finish();

    // References measured in the same run, to read the ratios against: independent per-thread
    // work of similar size (the best this machine can scale right now) and the same histogram
    // update behind one global mutex (what "serialized" looks like).
    let mut group = c.benchmark_group("reference_throughput");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_with_input(
            BenchmarkId::new("independent", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    on_threads(t, iters, || {
                        let mut local = vec![0u64; 1438];
                        move |i| {
                            let ns = 1_000 + (i % 4096) * 250;
                            let idx = ((ns as f64).ln() / 1.02f64.ln()).ceil() as usize;
                            local[idx.min(1437)] += 1;
                            black_box(&local);
                        }
                    })
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("two_clock_reads", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    on_threads(t, iters, || {
                        |_| {
                            let start = Instant::now();
                            black_box(start.elapsed());
                        }
                    })
                })
            },
        );
        let global = std::sync::Mutex::new(vec![0u64; 1438]);
        group.bench_with_input(
            BenchmarkId::new("global_mutex", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    on_threads(t, iters, || {
                        |i| {
                            let ns = 1_000 + (i % 4096) * 250;
                            let idx = ((ns as f64).ln() / 1.02f64.ln()).ceil() as usize;
                            global.lock().unwrap()[idx.min(1437)] += 1;
                        }
                    })
                })
            },
        );
    }
    group.finish();

    // The whole layer (route lookup, guard, in-flight counters, both histograms) per request.
    let mut group = c.benchmark_group("layer_throughput");
    for threads in [1usize, 2] {
        let label = |_: &tower_strata::metrics::RequestInfo<'_>| Some("/users/{id}");
        let svc = ServiceBuilder::new()
            .layer(MetricsLayer::new(registry(false)).route_label(label))
            .service_fn(|_req: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            });
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                on_threads(t, iters, || {
                    // One service per thread, as a server has one per connection.
                    let mut svc = svc.clone();
                    move |_| {
                        let req = Request::get("/users/42").body(String::new()).unwrap();
                        let res = svc.call(req).now_or_never().unwrap().unwrap();
                        black_box(res);
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, layer_overhead, recording_scales, export_cost);
criterion_main!(benches);
