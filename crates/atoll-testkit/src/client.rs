//! A small HTTP client for a region's API v1, for tests.
//!
//! The `*_raw` methods return every answer as a [`Reply`] (status, headers, body) and fail only
//! when no answer arrived (connection refused or reset, timeout): a load generator needs to tell
//! "the region said no" from "we do not know what happened". The typed methods on top of them
//! require the expected status and decode the body.

use anyhow::{Context, Result, anyhow, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;

/// Header naming the region that served a request.
pub const REGION_HEADER: &str = "x-atoll-region";
/// Header carrying an mvr key's causal context.
pub const CONTEXT_HEADER: &str = "x-atoll-context";
/// Header carrying an lww value's HLC timestamp.
pub const TIMESTAMP_HEADER: &str = "x-atoll-timestamp";

/// Default per-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters left as they are in a path segment; everything else is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An HLC timestamp as the API prints it (`wall_ms.logical`); ordered like the HLC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Ts {
    pub fn parse(s: &str) -> Result<Ts> {
        let (w, l) = s.split_once('.').unwrap_or((s, "0"));
        Ok(Ts {
            wall_ms: w.parse().with_context(|| format!("bad timestamp {s:?}"))?,
            logical: l.parse().with_context(|| format!("bad timestamp {s:?}"))?,
        })
    }
}

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.logical)
    }
}

/// One answer of the region.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {}", self.status, self.text()))
    }

    /// The `error.code` of an error answer (`ATOLL-...`).
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v["error"]["code"].as_str().map(str::to_string)
    }

    /// `Ok(self)` if the status is `want`, else an error showing status and body.
    pub fn expect(self, want: u16) -> Result<Reply> {
        if self.status == want {
            Ok(self)
        } else {
            Err(anyhow!(
                "expected HTTP {want}, got HTTP {}: {}",
                self.status,
                self.text()
            ))
        }
    }
}

/// The acknowledgement of a kv write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteAck {
    pub region: String,
    pub seq: u64,
    pub timestamp: Ts,
    /// mvr keyspaces only: the context after the write.
    pub context: Option<String>,
}

impl WriteAck {
    fn from_json(v: &Value) -> Result<WriteAck> {
        Ok(WriteAck {
            region: v["region"]
                .as_str()
                .ok_or_else(|| anyhow!("ack without region: {v}"))?
                .to_string(),
            seq: v["seq"]
                .as_u64()
                .ok_or_else(|| anyhow!("ack without seq: {v}"))?,
            timestamp: Ts::parse(
                v["timestamp"]
                    .as_str()
                    .ok_or_else(|| anyhow!("ack without timestamp: {v}"))?,
            )?,
            context: v["context"].as_str().map(str::to_string),
        })
    }
}

/// One concurrent value of an mvr key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    pub value: Vec<u8>,
    pub region: String,
    pub timestamp: Ts,
}

/// What a kv read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvRead {
    /// 404: never written or deleted. `context` is set for mvr keyspaces.
    Missing { context: Option<String> },
    /// 200: one value. `timestamp` is set for lww, `context` for mvr.
    Value {
        value: Vec<u8>,
        timestamp: Option<Ts>,
        context: Option<String>,
    },
    /// 300: mvr siblings, in the order the region listed them, and the context that
    /// supersedes all of them.
    Siblings {
        siblings: Vec<Sibling>,
        context: String,
    },
}

impl KvRead {
    /// The single value, if there is exactly one.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            KvRead::Value { value, .. } => Some(value),
            _ => None,
        }
    }

    pub fn context(&self) -> Option<&str> {
        match self {
            KvRead::Missing { context } | KvRead::Value { context, .. } => context.as_deref(),
            KvRead::Siblings { context, .. } => Some(context),
        }
    }

    /// Every live value, sorted (one for `Value`, several for `Siblings`, none for `Missing`).
    pub fn values_sorted(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = match self {
            KvRead::Missing { .. } => Vec::new(),
            KvRead::Value { value, .. } => vec![value.clone()],
            KvRead::Siblings { siblings, .. } => siblings.iter().map(|s| s.value.clone()).collect(),
        };
        v.sort();
        v
    }
}

/// A client of one region's HTTP API.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of `endpoint` (`http://127.0.0.1:PORT`) with [`REQUEST_TIMEOUT`].
    pub fn new(endpoint: &str) -> Client {
        Self::with_timeout(endpoint, REQUEST_TIMEOUT)
    }

    pub fn with_timeout(endpoint: &str, timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .no_proxy()
            .build()
            .expect("a plain-HTTP reqwest client always builds");
        Client {
            http,
            base: endpoint.trim_end_matches('/').to_string(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `{endpoint}/v1/{kind}/{keyspace}/{key}`, with both names percent-encoded.
    pub fn url(&self, kind: &str, keyspace: &str, key: &str) -> String {
        format!(
            "{}/v1/{kind}/{}/{}",
            self.base,
            utf8_percent_encode(keyspace, SEGMENT),
            utf8_percent_encode(key, SEGMENT)
        )
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?.to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// `{method} {endpoint}{path}` with `headers` and `body` (any route; the answer as it came).
    pub async fn request_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Result<Reply> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body.into());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    /// `GET {endpoint}{path}`.
    pub async fn get_raw(&self, path: &str) -> Result<Reply> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn kv_put_raw(
        &self,
        keyspace: &str,
        key: &str,
        value: impl Into<Vec<u8>>,
        context: Option<&str>,
    ) -> Result<Reply> {
        let mut req = self
            .http
            .put(self.url("kv", keyspace, key))
            .body(value.into());
        if let Some(c) = context {
            req = req.header(CONTEXT_HEADER, c);
        }
        self.send(req).await
    }

    pub async fn kv_get_raw(&self, keyspace: &str, key: &str) -> Result<Reply> {
        self.send(self.http.get(self.url("kv", keyspace, key)))
            .await
    }

    pub async fn kv_del_raw(
        &self,
        keyspace: &str,
        key: &str,
        context: Option<&str>,
    ) -> Result<Reply> {
        let mut req = self.http.delete(self.url("kv", keyspace, key));
        if let Some(c) = context {
            req = req.header(CONTEXT_HEADER, c);
        }
        self.send(req).await
    }

    pub async fn counter_add_raw(&self, keyspace: &str, key: &str, delta: i64) -> Result<Reply> {
        let req = self
            .http
            .post(self.url("counter", keyspace, key))
            .json(&json!({ "delta": delta }));
        self.send(req).await
    }

    pub async fn counter_get_raw(&self, keyspace: &str, key: &str) -> Result<Reply> {
        self.send(self.http.get(self.url("counter", keyspace, key)))
            .await
    }

    pub async fn set_update_raw(
        &self,
        keyspace: &str,
        key: &str,
        add: &[&str],
        remove: &[&str],
    ) -> Result<Reply> {
        let req = self
            .http
            .post(self.url("set", keyspace, key))
            .json(&json!({ "add": add, "remove": remove }));
        self.send(req).await
    }

    pub async fn set_members_raw(&self, keyspace: &str, key: &str) -> Result<Reply> {
        self.send(self.http.get(self.url("set", keyspace, key)))
            .await
    }

    /// Writes a value; requires 200.
    pub async fn kv_put(
        &self,
        keyspace: &str,
        key: &str,
        value: impl Into<Vec<u8>>,
        context: Option<&str>,
    ) -> Result<WriteAck> {
        let r = self
            .kv_put_raw(keyspace, key, value, context)
            .await?
            .expect(200)
            .with_context(|| format!("PUT {keyspace}/{key}"))?;
        WriteAck::from_json(&r.json()?)
    }

    /// Deletes a key; requires 200.
    pub async fn kv_del(
        &self,
        keyspace: &str,
        key: &str,
        context: Option<&str>,
    ) -> Result<WriteAck> {
        let r = self
            .kv_del_raw(keyspace, key, context)
            .await?
            .expect(200)
            .with_context(|| format!("DELETE {keyspace}/{key}"))?;
        WriteAck::from_json(&r.json()?)
    }

    /// Waits until a read of `keyspace/key` answers exactly `value` (errors and other answers
    /// are read again), for at most `timeout`: a write to arrive by replication, or through a
    /// proxy.
    pub async fn wait_value(
        &self,
        keyspace: &str,
        key: &str,
        value: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<()> {
        let value = value.as_ref();
        let what = format!(
            "{keyspace}/{key} = {:?} at {}",
            String::from_utf8_lossy(value),
            self.base
        );
        crate::wait::wait_until_async(timeout, &what, || async {
            matches!(self.kv_get(keyspace, key).await, Ok(r) if r.value() == Some(value))
        })
        .await
    }

    /// Reads a key: 200, 300 and 404 are answers; anything else is an error.
    pub async fn kv_get(&self, keyspace: &str, key: &str) -> Result<KvRead> {
        let r = self.kv_get_raw(keyspace, key).await?;
        let context = r.header(CONTEXT_HEADER).map(str::to_string);
        match r.status {
            200 => Ok(KvRead::Value {
                timestamp: r.header(TIMESTAMP_HEADER).map(Ts::parse).transpose()?,
                value: r.body,
                context,
            }),
            404 if r.error_code().as_deref() == Some("ATOLL-NOT-FOUND") => {
                Ok(KvRead::Missing { context })
            }
            300 => {
                let v = r.json()?;
                let siblings = v["siblings"]
                    .as_array()
                    .ok_or_else(|| anyhow!("300 without siblings: {v}"))?
                    .iter()
                    .map(sibling_from_json)
                    .collect::<Result<Vec<_>>>()?;
                let context = v["context"]
                    .as_str()
                    .ok_or_else(|| anyhow!("300 without context: {v}"))?
                    .to_string();
                Ok(KvRead::Siblings { siblings, context })
            }
            other => bail!("GET {keyspace}/{key}: HTTP {other}: {}", r.text()),
        }
    }

    /// Adds `delta`; requires 200 and returns `(value after the write, seq)`.
    pub async fn counter_add(&self, keyspace: &str, key: &str, delta: i64) -> Result<(i64, u64)> {
        let v = self
            .counter_add_raw(keyspace, key, delta)
            .await?
            .expect(200)
            .with_context(|| format!("POST counter {keyspace}/{key}"))?
            .json()?;
        Ok((
            v["value"]
                .as_i64()
                .ok_or_else(|| anyhow!("no value: {v}"))?,
            v["seq"].as_u64().ok_or_else(|| anyhow!("no seq: {v}"))?,
        ))
    }

    pub async fn counter_get(&self, keyspace: &str, key: &str) -> Result<i64> {
        let v = self
            .counter_get_raw(keyspace, key)
            .await?
            .expect(200)
            .with_context(|| format!("GET counter {keyspace}/{key}"))?
            .json()?;
        v["value"].as_i64().ok_or_else(|| anyhow!("no value: {v}"))
    }

    /// Adds and removes members; requires 200 and returns `(members after, seq)`.
    pub async fn set_update(
        &self,
        keyspace: &str,
        key: &str,
        add: &[&str],
        remove: &[&str],
    ) -> Result<(Vec<String>, u64)> {
        let v = self
            .set_update_raw(keyspace, key, add, remove)
            .await?
            .expect(200)
            .with_context(|| format!("POST set {keyspace}/{key}"))?
            .json()?;
        Ok((
            sorted_members(&v)?,
            v["seq"].as_u64().ok_or_else(|| anyhow!("no seq: {v}"))?,
        ))
    }

    /// The members, sorted.
    pub async fn set_members(&self, keyspace: &str, key: &str) -> Result<Vec<String>> {
        let v = self
            .set_members_raw(keyspace, key)
            .await?
            .expect(200)
            .with_context(|| format!("GET set {keyspace}/{key}"))?
            .json()?;
        sorted_members(&v)
    }

    /// `GET /v1/status` as JSON.
    pub async fn status(&self) -> Result<Value> {
        self.get_raw("/v1/status").await?.expect(200)?.json()
    }

    /// The status code of `GET /healthz`.
    pub async fn healthz(&self) -> Result<u16> {
        Ok(self.get_raw("/healthz").await?.status)
    }
}

fn sibling_from_json(v: &Value) -> Result<Sibling> {
    use base64::Engine as _;
    let value = match v["value_base64"].as_str() {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .with_context(|| format!("bad base64 in sibling {v}"))?,
        None => bail!("sibling without value_base64: {v}"),
    };
    Ok(Sibling {
        value,
        region: v["region"].as_str().unwrap_or_default().to_string(),
        timestamp: Ts::parse(v["timestamp"].as_str().unwrap_or_default())?,
    })
}

fn sorted_members(v: &Value) -> Result<Vec<String>> {
    let mut m: Vec<String> = v["members"]
        .as_array()
        .ok_or_else(|| anyhow!("no members: {v}"))?
        .iter()
        .map(|m| {
            m.as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("member is not a string: {m}"))
        })
        .collect::<Result<_>>()?;
    m.sort();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_and_order_like_the_hlc() {
        let a = Ts::parse("1700000000000.2").unwrap();
        let b = Ts::parse("1700000000000.10").unwrap();
        let c = Ts::parse("1700000000001").unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000.10");
        assert!(Ts::parse("x.1").is_err());
    }

    #[test]
    fn urls_percent_encode_names() {
        let c = Client::new("http://127.0.0.1:1/");
        assert_eq!(
            c.url("kv", "sessions", "a/b c"),
            "http://127.0.0.1:1/v1/kv/sessions/a%2Fb%20c"
        );
    }
}
