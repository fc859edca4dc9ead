//! The stored form of a response: a compact, versioned binary record.
//!
//! ```text
//! "TSR" version:u8 kind:u8 identity_len:u16 identity
//! kind 0 (response):
//!   status:u16 initial_age_s:u32 lifetime_s:u32 swr_s:u32 sie_s:u32 flags:u8
//!   header_count:u16 { name_len:u16 name value_len:u16 value }*
//!   trailer_count:u16 (0xFFFF = no trailers) { name_len:u16 name value_len:u16 value }*
//!   body (the rest; served as a slice of the stored bytes, without copying)
//! kind 1 (vary spec: the response varies, variants live under their own keys):
//!   name_count:u16 { name_len:u16 name }*
//! ```
//! `u32::MAX` in `swr_s`/`sie_s` means absent. The identity is the full key the record was
//! stored under; readers compare it, so a hashed key that collides is a miss.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::policy::Freshness;

const MAGIC: &[u8; 3] = b"TSR";
const VERSION: u8 = 1;
const NONE: u32 = u32::MAX;
const NO_TRAILERS: u16 = u16::MAX;

/// A stored response.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub identity: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub trailers: Option<HeaderMap>,
    pub body: Bytes,
    pub freshness: Freshness,
}

/// What a primary key holds.
#[derive(Debug)]
pub(crate) enum Stored {
    Response(Arc<Record>),
    Vary {
        identity: String,
        names: Vec<HeaderName>,
    },
}

/// Why bytes could not be read as a record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Corrupt(pub &'static str);

fn secs(d: Duration) -> u32 {
    d.as_secs().min(u64::from(NONE - 1)) as u32
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

fn put_headers(buf: &mut BytesMut, headers: &HeaderMap) {
    buf.put_u16(headers.len() as u16);
    for (name, value) in headers {
        put_str(buf, name.as_str().as_bytes());
        put_str(buf, value.as_bytes());
    }
}

impl Record {
    /// Whether the record can be encoded: fields fit their length prefixes.
    pub(crate) fn encodable(&self) -> bool {
        let fits = |h: &HeaderMap| {
            h.len() < usize::from(NO_TRAILERS)
                && h.iter().all(|(_, v)| v.len() <= usize::from(u16::MAX))
        };
        self.identity.len() <= usize::from(u16::MAX)
            && fits(&self.headers)
            && self.trailers.as_ref().is_none_or(fits)
    }

    pub(crate) fn encode(&self) -> Bytes {
        let header_bytes: usize = self
            .headers
            .iter()
            .map(|(n, v)| 4 + n.as_str().len() + v.len())
            .sum();
        let mut buf =
            BytesMut::with_capacity(32 + self.identity.len() + header_bytes + self.body.len());
        buf.put_slice(MAGIC);
        buf.put_u8(VERSION);
        buf.put_u8(0);
        put_str(&mut buf, self.identity.as_bytes());
        buf.put_u16(self.status.as_u16());
        let f = &self.freshness;
        buf.put_u32(secs(f.initial_age));
        buf.put_u32(secs(f.lifetime));
        buf.put_u32(f.swr.map_or(NONE, secs));
        buf.put_u32(f.sie.map_or(NONE, secs));
        buf.put_u8(u8::from(f.must_revalidate));
        put_headers(&mut buf, &self.headers);
        match &self.trailers {
            Some(t) => put_headers(&mut buf, t),
            None => buf.put_u16(NO_TRAILERS),
        }
        buf.put_slice(&self.body);
        buf.freeze()
    }
}

/// Encodes a vary spec.
pub(crate) fn encode_vary(identity: &str, names: &[HeaderName]) -> Bytes {
    let mut buf = BytesMut::with_capacity(16 + identity.len() + names.len() * 20);
    buf.put_slice(MAGIC);
    buf.put_u8(VERSION);
    buf.put_u8(1);
    put_str(&mut buf, identity.as_bytes());
    buf.put_u16(names.len() as u16);
    for name in names {
        put_str(&mut buf, name.as_str().as_bytes());
    }
    buf.freeze()
}

struct Reader<'a> {
    src: &'a Bytes,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn need(&self, n: usize) -> Result<(), Corrupt> {
        if self.buf.remaining() < n {
            Err(Corrupt("truncated record"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, Corrupt> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, Corrupt> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, Corrupt> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn bytes(&mut self) -> Result<&'a [u8], Corrupt> {
        let len = usize::from(self.u16()?);
        self.need(len)?;
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }
    fn string(&mut self) -> Result<String, Corrupt> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| Corrupt("identity is not UTF-8"))
    }
    fn headers(&mut self, count: u16) -> Result<HeaderMap, Corrupt> {
        let mut map = HeaderMap::with_capacity(usize::from(count));
        for _ in 0..count {
            let name = HeaderName::from_bytes(self.bytes()?)
                .map_err(|_| Corrupt("invalid header name"))?;
            // The value is a slice of the stored bytes: no copy.
            let raw = self.bytes()?;
            let start = self.src.len() - self.buf.len() - raw.len();
            let value = HeaderValue::from_maybe_shared(self.src.slice(start..start + raw.len()))
                .map_err(|_| Corrupt("invalid header value"))?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// Decodes a record; the body is a slice of `bytes`, not a copy.
pub(crate) fn decode(bytes: &Bytes) -> Result<Stored, Corrupt> {
    if bytes.len() < 5 || &bytes[..3] != MAGIC {
        return Err(Corrupt("not a tower-strata response record"));
    }
    if bytes[3] != VERSION {
        return Err(Corrupt("unknown record version"));
    }
    let kind = bytes[4];
    let mut r = Reader {
        src: bytes,
        buf: &bytes[5..],
    };
    let identity = r.string()?;
    match kind {
        0 => {
            let status = StatusCode::from_u16(r.u16()?).map_err(|_| Corrupt("invalid status"))?;
            let opt = |v: u32| (v != NONE).then(|| Duration::from_secs(u64::from(v)));
            let initial_age = Duration::from_secs(u64::from(r.u32()?));
            let lifetime = Duration::from_secs(u64::from(r.u32()?));
            let swr = opt(r.u32()?);
            let sie = opt(r.u32()?);
            let must_revalidate = r.u8()? != 0;
            let count = r.u16()?;
            let headers = r.headers(count)?;
            let trailers = match r.u16()? {
                NO_TRAILERS => None,
                n => Some(r.headers(n)?),
            };
            let offset = bytes.len() - r.buf.len();
            Ok(Stored::Response(Arc::new(Record {
                identity,
                status,
                headers,
                trailers,
                body: bytes.slice(offset..),
                freshness: Freshness {
                    lifetime,
                    initial_age,
                    swr,
                    sie,
                    must_revalidate,
                },
            })))
        }
        1 => {
            let count = r.u16()?;
            let mut names = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                names.push(
                    HeaderName::from_bytes(r.bytes()?).map_err(|_| Corrupt("invalid vary name"))?,
                );
            }
            Ok(Stored::Vary { identity, names })
        }
        _ => Err(Corrupt("unknown record kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_without_copying_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let record = Record {
            identity: "GET http://h/p".into(),
            status: StatusCode::OK,
            headers,
            trailers: Some(trailers),
            body: Bytes::from_static(b"hello"),
            freshness: Freshness {
                lifetime: Duration::from_secs(60),
                initial_age: Duration::from_secs(3),
                swr: Some(Duration::from_secs(5)),
                sie: None,
                must_revalidate: true,
            },
        };
        let bytes = record.encode();
        let Stored::Response(back) = decode(&bytes).unwrap() else {
            panic!("kind")
        };
        assert_eq!(back.identity, record.identity);
        assert_eq!(back.headers, record.headers);
        assert_eq!(back.trailers, record.trailers);
        assert_eq!(back.freshness, record.freshness);
        assert_eq!(back.body, "hello");
        // The body points into the stored bytes.
        assert_eq!(back.body.as_ptr(), bytes[bytes.len() - 5..].as_ptr());
    }

    #[test]
    fn vary_spec_and_garbage() {
        let names = vec![HeaderName::from_static("accept-encoding")];
        let Stored::Vary { identity, names: n } = decode(&encode_vary("id", &names)).unwrap()
        else {
            panic!("kind")
        };
        assert_eq!((identity.as_str(), n), ("id", names));
        for bad in [&b""[..], b"TSR", b"TSR\x09\x00", b"TSR\x01\x00\x00\x09ab"] {
            assert!(decode(&Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
