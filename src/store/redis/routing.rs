//! The vocabulary the connection and the Cluster router share: timeouts, which errors say the
//! server is gone, and how a command finds its hash slot. It imports neither.

use std::time::Duration;

#[cfg(feature = "redis-cluster")]
use redis::Cmd;

/// How long to wait for a connection and for each answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

/// Whether an error says the server is not there (a lost or refused connection), rather than
/// that it answered with an error (a script or type error: the server is there).
pub(crate) fn backend_down(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Hash slots of a Cluster.
#[cfg(feature = "redis-cluster")]
const SLOTS: u16 = 16384;

/// The hash slot of a key: CRC16 (XMODEM) of its hash tag (`{...}`, when not empty) or of
/// the whole key, modulo 16,384.
#[cfg(feature = "redis-cluster")]
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let len = rest.iter().position(|&b| b == b'}')?;
            (len > 0).then(|| &rest[..len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// The key a command is routed by: its first argument, or for `EVAL`/`EVALSHA` the first key
/// after the key count (`None` when it has none).
#[cfg(feature = "redis-cluster")]
pub(crate) fn routing_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
        .collect();
    let name = args.first()?;
    if name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVALSHA") {
        let count: u64 = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
        return (count > 0)
            .then(|| args.get(3).map(|k| k.to_vec()))
            .flatten();
    }
    args.get(1).map(|k| k.to_vec())
}

#[cfg(all(test, feature = "redis-cluster"))]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_s() {
        // `CLUSTER KEYSLOT` of each, from a real server.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"hello"), 866);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
    }
}
