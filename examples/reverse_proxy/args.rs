//! The proxy's command line. The flags are a contract: scripts and unit files name them.

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;

/// A caching reverse proxy: the cache layer in front of an HTTP origin.
#[derive(Debug, clap::Parser)]
pub struct Args {
    /// The address to serve on (HTTP/1.1, and HTTP/2 without TLS: h2c with prior knowledge).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The origin every request is forwarded to.
    #[arg(long, value_name = "http://HOST:PORT", value_parser = origin)]
    pub origin: Uri,
    /// Where responses are stored: memory, redis://HOST:PORT (rediss:// with the redis-tls
    /// feature) or redis-cluster://HOST:PORT,HOST:PORT,... (redis-cluster feature).
    #[arg(long, value_name = "STORE", default_value = "memory", value_parser = store)]
    pub store: String,
    /// With a Redis store: the size of a memory L1 in front of it (a tiered store).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub l1_bytes: Option<u64>,
    /// The largest response body the cache records.
    #[arg(long, value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// The lifetime of responses that carry no freshness of their own.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub default_ttl: Option<Duration>,
    /// Serve a stored response up to SECS past its freshness when the origin fails, times
    /// out or answers 5xx, unless the response forbids it (must-revalidate, proxy-revalidate,
    /// no-cache, s-maxage) or gives a stale-if-error of its own. Default: never.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub stale_if_error: Option<Duration>,
    /// Bearer token that turns on purging over HTTP (PURGE <url>, POST /_cache/purge).
    #[arg(long, value_name = "TOKEN", value_parser = token)]
    pub purge_token: Option<String>,
    /// Trust the previous hop (a load balancer every client goes through): append the peer
    /// to its X-Forwarded-For and Forwarded, keep its X-Forwarded-Proto and -Host. Without
    /// it, clients' forwarding headers are dropped and the proxy sets its own.
    #[arg(long)]
    pub trust_forwarded: bool,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) to the origin, such as a gRPC server.
    /// Without it the origin is spoken to in HTTP/1.1, whatever the client speaks.
    #[arg(long)]
    pub origin_http2: bool,
    /// Cache unary calls to this gRPC method, keyed by the request message, for SECS
    /// seconds (default: --default-ttl, else 60). Repeatable. Needs the tonic feature.
    #[arg(long, value_name = "/pkg.Service/Method[=SECS]", value_parser = grpc_method)]
    pub grpc_method: Vec<GrpcMethod>,
    /// The languages the origin answers in, its default first: a response that varies on
    /// Accept-Language is stored once per language, each client keyed (and asking the
    /// origin) by the best of them it accepts.
    #[arg(long, value_name = "LANG,...", value_delimiter = ',')]
    pub accept_language: Vec<String>,
    /// The content codings the origin produces, most preferred first: a response that
    /// varies on Accept-Encoding is stored once per coding (and identity), not once per
    /// browser's list.
    #[arg(long, value_name = "CODING,...", value_delimiter = ',')]
    pub accept_encoding: Vec<String>,
}

/// A `--grpc-method`: the method's path and, when given, its TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcMethod {
    pub path: String,
    pub ttl: Option<Duration>,
}

impl Args {
    /// The TTL of a marked gRPC method's answers.
    pub fn grpc_ttl(&self, method: &GrpcMethod) -> Duration {
        method
            .ttl
            .or(self.default_ttl)
            .unwrap_or(Duration::from_secs(60))
    }
}

fn origin(v: &str) -> Result<Uri, String> {
    let uri: Uri = v.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("expected http://HOST:PORT".to_owned());
    }
    Ok(uri)
}

fn store(v: &str) -> Result<String, String> {
    let redis = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ];
    if v != "memory" && !redis.iter().any(|scheme| v.starts_with(scheme)) {
        return Err("expected memory, redis://... or redis-cluster://...".to_owned());
    }
    Ok(v.to_owned())
}

fn seconds(v: &str) -> Result<Duration, String> {
    v.parse()
        .map(Duration::from_secs)
        .map_err(|e| format!("{e}"))
}

fn token(v: &str) -> Result<String, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("expected non-empty visible ASCII".to_owned());
    }
    Ok(v.to_owned())
}

/// `PATH` or `PATH=SECS`; the path's shape is checked by `CacheLayer::grpc_method`.
fn grpc_method(v: &str) -> Result<GrpcMethod, String> {
    let (path, ttl) = match v.split_once('=') {
        Some((path, secs)) => (path, Some(seconds(secs)?)),
        None => (v, None),
    };
    if !path.starts_with('/') {
        return Err("expected /package.Service/Method".to_owned());
    }
    Ok(GrpcMethod {
        path: path.to_owned(),
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        <Args as clap::Parser>::try_parse_from(
            std::iter::once("reverse_proxy").chain(args.iter().copied()),
        )
    }

    #[test]
    fn parses_the_contract() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:8080",
            "--origin",
            "http://127.0.0.1:9000",
            "--store",
            "redis://127.0.0.1:6379",
            "--l1-bytes",
            "67108864",
            "--max-body",
            "1024",
            "--default-ttl",
            "30",
            "--purge-token",
            "t0ken",
        ])
        .unwrap();
        assert_eq!(a.listen.port(), 8080);
        assert_eq!(a.store, "redis://127.0.0.1:6379");
        let cluster = "redis-cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002";
        let c = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--origin",
            "http://o:1",
            "--store",
            cluster,
        ])
        .unwrap();
        assert_eq!(c.store, cluster);
        assert!(parse(&["--store", "cluster://x:1"]).is_err());
        assert_eq!(a.l1_bytes, Some(67_108_864));
        assert!(parse(&["--l1-bytes", "0"]).is_err());
        assert!(parse(&["--l1-bytes", "-1"]).is_err());
        assert_eq!(a.max_body, Some(1024));
        assert_eq!(a.default_ttl, Some(Duration::from_secs(30)));
        assert_eq!(a.purge_token.as_deref(), Some("t0ken"));
        assert!(!a.trust_forwarded && !a.origin_http2 && a.grpc_method.is_empty());
        assert!(a.stale_if_error.is_none());
        let plain = parse(&["--listen", "127.0.0.1:1", "--origin", "http://o:1"]).unwrap();
        assert!(plain.purge_token.is_none());
        assert!(parse(&["--purge-token", "two words"]).is_err());
        assert!(parse(&["--purge-token", ""]).is_err());
        assert!(parse(&["--listen", "x"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:1", "--origin", "ftp://o"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--listen"]).is_err());
    }

    #[test]
    fn parses_vary_normalisers() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--origin",
            "http://127.0.0.1:1",
            "--accept-language",
            "de,en",
            "--accept-encoding",
            "br,gzip",
        ])
        .unwrap();
        assert_eq!(a.accept_language, ["de", "en"]);
        assert_eq!(a.accept_encoding, ["br", "gzip"]);
    }

    #[test]
    fn parses_forwarding_http2_grpc_methods_and_stale_if_error() {
        let base = ["--listen", "127.0.0.1:1", "--origin", "http://o:1"];
        let with = |more: &[&str]| parse(&[&base[..], more].concat());
        let a = with(&[
            "--trust-forwarded",
            "--origin-http2",
            "--grpc-method",
            "/shop.Catalog/GetProduct",
            "--grpc-method",
            "/shop.Catalog/ListProducts=5",
            "--stale-if-error",
            "300",
        ])
        .unwrap();
        assert_eq!(a.stale_if_error, Some(Duration::from_secs(300)));
        assert!(a.trust_forwarded && a.origin_http2);
        let ttls: Vec<_> = a.grpc_method.iter().map(|m| a.grpc_ttl(m)).collect();
        assert_eq!(a.grpc_method[1].path, "/shop.Catalog/ListProducts");
        assert_eq!(ttls, [Duration::from_secs(60), Duration::from_secs(5)]);
        let b = with(&["--default-ttl", "9", "--grpc-method", "/a.B/C"]).unwrap();
        assert_eq!(b.grpc_ttl(&b.grpc_method[0]), Duration::from_secs(9));
        assert!(with(&["--grpc-method", "a.B/C"]).is_err());
        assert!(with(&["--grpc-method", "/a.B/C=soon"]).is_err());
    }
}
