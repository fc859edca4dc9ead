//! The hit path without a future: when the store answers at once ([`Store::get_now`]: the
//! memory store), a fresh hit is answered inside `call`, with no boxed future, no clone of the
//! inner service, the key built in a reused per-thread buffer, the record decoded once per
//! stored entry and its `Age` and `Cache-Status` values made once a second. Anything else
//! (a miss, a stale entry, a request with directives, cookies or conditionals to weigh) goes
//! the general way, which looks up again.

use std::cell::RefCell;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response};

use super::body::{CacheBody, Resp};
use super::conditional::has_conditionals;
use super::ctx::Ctx;
use super::key;
use super::lookup::{Decoded, HitHeaders, decoded};
use super::record::{Record, Stored};
use super::scope::CacheScope;
use super::serve::serve_record;
use super::status::{CACHE_STATUS, Outcome};
use crate::store::entry::clock_micros;
use crate::store::{Entry, Store};

thread_local! {
    /// The key of the request being looked up: built here so a hit allocates none.
    static KEY: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// A fresh hit, answered now, or `None` to take the general path.
pub(crate) fn try_hit<St: Store, B, RB>(ctx: &Ctx<St>, request: &Request<B>) -> Option<Resp<RB>> {
    let config = &ctx.config;
    let method = request.method();
    let headers = request.headers();
    if !config.looks_up(method)
        || headers.contains_key(header::CACHE_CONTROL)
        || headers.contains_key(header::PRAGMA)
        || headers.contains_key(header::COOKIE)
        || headers.contains_key(header::CONTENT_TYPE)
        || has_conditionals(headers)
        // Private entries are looked up the general way, in the private scope's store.
        || CacheScope::of(request).is_some()
    {
        return None;
    }
    if let Some(routes) = &config.routes {
        let path = request.uri().path();
        if !routes.iter().any(|p| path.starts_with(p.as_str())) {
            return None;
        }
    }
    KEY.with(|buffer| {
        let mut buffer = buffer.try_borrow_mut().ok()?;
        // One huge URI must not keep this thread's buffer huge.
        if buffer.capacity() > 4096 {
            *buffer = String::with_capacity(256);
        }
        let key = config.key.plain_primary(&mut buffer, request)?;
        let identity = &key[key::PLAIN_PREFIX.len()..];
        let entry = ctx.store.get_now(key)?.ok()??;
        let first = decoded(&entry, key)?;
        let (decoded, entry) = if let Stored::Vary {
            identity: stored,
            names,
        } = &first.stored
        {
            if stored != identity {
                return None;
            }
            let variant = key::store_key(&config.key.variant_identity(identity, names, headers));
            let entry = ctx.store.get_now(&variant)?.ok()??;
            (decoded(&entry, &variant)?, entry)
        } else {
            (first, entry)
        };
        let Stored::Response(record) = &decoded.stored else {
            return None;
        };
        // A hashed key that collided, or a variant stored under the primary key: the general
        // path decides (the comparison allocates only for a `Vary`'d record).
        let names = &decoded.vary;
        let matches = if names.is_empty() {
            record.identity == identity
        } else {
            record.identity == config.key.select_variant(identity, names, headers)
        };
        if !matches {
            return None;
        }
        respond(ctx, &decoded, record, &entry, method, headers, key)
    })
}

/// Serves a fresh record; `None` if it is stale.
fn respond<St, RB>(
    ctx: &Ctx<St>,
    decoded: &Arc<Decoded>,
    record: &Record,
    entry: &Entry,
    method: &Method,
    headers: &http::HeaderMap,
    key: &str,
) -> Option<Resp<RB>> {
    if entry.is_soft_purged() {
        return None;
    }
    let entry_age = entry.age_at(clock_micros());
    let ttl_left = match entry.ttl() {
        Some(ttl) if entry_age >= ttl => return None,
        // Within the refresh-ahead window: the general path serves it and starts the refresh.
        Some(ttl) if ctx.config.in_refresh_window(ttl, entry_age) => return None,
        Some(ttl) => Some((ttl - entry_age).as_secs()),
        None => None,
    };
    let age = record
        .freshness
        .initial_age
        .saturating_add(entry_age)
        .as_secs();
    let at = (age, ttl_left);
    let outcome = Outcome::Hit { ttl_left };
    let made = || HitHeaders {
        at,
        age: HeaderValue::from(age),
        status: outcome.status_value(ctx),
    };
    // Another thread serving this entry holds the slot: make this hit's values instead of
    // waiting for it.
    let (age, status) = match decoded.hit_headers.try_lock() {
        Ok(mut slot) => {
            if slot
                .as_ref()
                .is_none_or(|h| h.at != at || h.status.is_some() != ctx.config.cache_status)
            {
                *slot = Some(made());
            }
            let h = slot.as_ref()?;
            (h.age.clone(), h.status.clone())
        }
        Err(_) => {
            let h = made();
            (h.age, h.status)
        }
    };
    outcome.count_for(&ctx.shared, Some(key));
    let Some(template) = &decoded.hit_template else {
        return Some(serve_record(record, method, headers, age, status));
    };
    let mut response = Response::new(if method == Method::HEAD {
        CacheBody::empty()
    } else {
        CacheBody::stored(record.body.clone(), record.trailers.clone())
    });
    *response.status_mut() = record.status;
    let h = response.headers_mut();
    // A cloned map has no spare room and `insert` reserves before it looks: overwrite the
    // template's placeholders in place instead.
    *h = template.clone();
    if let Some(slot) = h.get_mut(header::AGE) {
        *slot = age;
    }
    match (status, h.get_mut(&CACHE_STATUS)) {
        (Some(status), Some(slot)) => *slot = status,
        _ => {
            h.remove(&CACHE_STATUS);
        }
    }
    Some(response)
}
