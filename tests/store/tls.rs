//! `rediss://` (feature `redis-tls`): the store and its backplane over TLS, against a private
//! `redis-server` that serves TLS only, with a self-signed certificate made by `openssl`.
#![cfg(all(feature = "redis-tls", feature = "memory"))]

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use support::{eventually, free_port, unique};
use tower_strata::store::{PurgeMode, RedisStore, SetOptions, Store, StoreError};

/// A TLS-only redis-server; killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
    dir: std::path::PathBuf,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = std::env::temp_dir().join(unique("strata-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(made.success(), "openssl made a certificate");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem"])
            .args(["--tls-ca-cert-file", "cert.pem", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        TlsRedis { port, child, dir }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn store(url: String) -> RedisStore {
    RedisStore::builder(url)
        .namespace(unique("tls"))
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .ping_interval(Duration::from_millis(200))
        .breaker(None)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_its_backplane_work_over_tls() {
    let redis = TlsRedis::start();
    // `#insecure`: the certificate is self-signed.
    let store = store(format!("rediss://127.0.0.1:{}/#insecure", redis.port));
    let answered = eventually(Duration::from_secs(10), || async {
        store.ping().await.is_ok()
    })
    .await;
    assert!(answered.is_some(), "the TLS server answers");
    store
        .set(
            "k",
            Bytes::from_static(b"v"),
            &SetOptions::new().tags(["t"]),
        )
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value(), &b"v"[..]);
    store.purge_tag("t", PurgeMode::Hard).await.unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    let subscribed = eventually(Duration::from_secs(10), || async {
        store.backplane_connected()
    })
    .await;
    assert!(subscribed.is_some(), "the backplane subscribes over TLS");

    // Certificates are checked unless told otherwise: a self-signed one is refused.
    let strict = self::store(format!("rediss://127.0.0.1:{}", redis.port));
    let refused = strict.get("k").await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Backend { .. } | StoreError::Timeout { .. })
        ),
        "{refused:?}"
    );
    // A plain connection to a TLS port gets no answer it can read.
    let plain = self::store(format!("redis://127.0.0.1:{}", redis.port));
    assert!(plain.get("k").await.is_err());
}
