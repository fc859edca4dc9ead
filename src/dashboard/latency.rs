//! The latency part, read from a [`MetricsRegistry`] (feature `metrics`).

use std::sync::Arc;

use super::data::{LatencyData, RouteData, RouteHistory, SlowRequestData, WindowData};
use super::history::RoutePoint;
use crate::metrics::{MetricsRegistry, RouteSnapshot, Window};

/// Routes kept per chart sample (the busiest ones); others are left out of the charts, not
/// out of the table.
const MAX_ROUTES: usize = 32;

const ONE_MINUTE_SECS: f64 = 60.0;
const FIVE_MINUTES_SECS: f64 = 300.0;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn window(s: Option<&RouteSnapshot>, secs: f64) -> WindowData {
    let Some(s) = s else {
        return WindowData {
            count: 0,
            requests_per_second: 0.0,
            errors: 0,
            error_rate: 0.0,
            cancelled: 0,
            slow: 0,
            mean_ms: 0.0,
            p50_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
        };
    };
    WindowData {
        count: s.count,
        requests_per_second: s.count as f64 / secs,
        errors: s.errors,
        error_rate: s.error_rate,
        cancelled: s.cancelled,
        slow: s.slow,
        mean_ms: ms(s.latency.mean),
        p50_ms: ms(s.latency.p50),
        p95_ms: ms(s.latency.p95),
        p99_ms: ms(s.latency.p99),
        max_ms: ms(s.latency.max),
    }
}

/// Chart points from the one-minute snapshots: the busiest [`MAX_ROUTES`] routes.
fn points_of(last_minute: &[RouteSnapshot]) -> Vec<RoutePoint> {
    let mut busiest: Vec<&RouteSnapshot> = last_minute.iter().collect();
    busiest.sort_by_key(|s| std::cmp::Reverse(s.count));
    busiest.truncate(MAX_ROUTES);
    busiest
        .into_iter()
        .map(|s| RoutePoint {
            route: Arc::from(s.route.as_str()),
            method: s.method,
            p50_ms: ms(s.latency.p50) as f32,
            p95_ms: ms(s.latency.p95) as f32,
            p99_ms: ms(s.latency.p99) as f32,
            requests_per_second: (s.count as f64 / ONE_MINUTE_SECS) as f32,
        })
        .collect()
}

/// A chart sample's route points.
pub(crate) fn points(registry: &MetricsRegistry) -> Vec<RoutePoint> {
    points_of(&registry.snapshot(Window::OneMinute))
}

/// The latency part (route histories left empty for the caller to fill) and a sample's
/// route points.
pub(crate) fn collect(registry: &MetricsRegistry) -> (LatencyData, Vec<RoutePoint>) {
    let last_minute = registry.snapshot(Window::OneMinute);
    let last_five = registry.snapshot(Window::FiveMinutes);
    let routes = last_five
        .iter()
        .map(|five| {
            let one = last_minute
                .iter()
                .find(|s| s.route == five.route && s.method == five.method);
            RouteData {
                route: five.route.clone(),
                method: five.method.to_owned(),
                last_minute: window(one, ONE_MINUTE_SECS),
                last_five_minutes: window(Some(five), FIVE_MINUTES_SECS),
                history: RouteHistory::default(),
            }
        })
        .collect();
    let slow_requests = registry
        .slow_requests()
        .into_iter()
        .map(|s| SlowRequestData {
            route: s.route,
            method: s.method.to_owned(),
            status: s.status,
            grpc_status: s.grpc_status,
            duration_ms: ms(s.duration),
            cancelled: s.cancelled,
            at_unix_ms: s.at_unix_ms,
        })
        .collect();
    let latency = LatencyData {
        in_flight: registry.in_flight(),
        slow_total: registry.slow_total(),
        routes,
        slow_requests,
    };
    (latency, points_of(&last_minute))
}
