//! Webhooks: a template's `webhooks:` POST its tasks' lifecycle events to HTTP endpoints, from
//! a durable outbox.
//!
//! ```yaml
//! webhooks:
//!   - on: [task.completed, task.failed, step.failed]
//!     url: https://hooks.example.com/tasker
//!     secret_env: TASKER_WEBHOOK_SECRET     # signs each body (X-Tasker-Signature)
//!     timeout_ms: 10000                     # per delivery (default 10 s, at most 60 s)
//!     retry: { max_attempts: 8 }            # the steps' retry policy fields
//! ```
//!
//! Each event a webhook is `on` becomes a delivery, written in the same transaction as the
//! transition that makes the event (a crash cannot lose one), with an id of its own — the
//! `Idempotency-Key` it is sent with, every time. Every engine on the store delivers: it
//! leases due deliveries, POSTs each within its time limit, and marks it delivered (a 2xx
//! answer), retries it after the backoff (a connection error, a timeout, 408, 429 or 5xx) or
//! fails it for good (any other status, a redirect, an address refused, the attempts used
//! up). A delivery whose engine died mid-way is leased again once its lease (twice its time
//! limit) runs out: delivery is at least once, and receivers drop repeats by
//! `Idempotency-Key`.
//!
//! Before each delivery the URL's host is resolved, and a host with any loopback, private,
//! link-local, shared, multicast, unspecified or cloud-metadata address is refused (see
//! [`forbidden`]) unless the engine was opened with `allow_private_webhooks`; the connection
//! goes to the addresses checked, and redirects are not followed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::clock::Timestamp;
use crate::ids::TaskId;
use crate::retry::RetryPolicy;
use crate::state::Transition;

/// The default time limit of one delivery.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The longest time limit a webhook may set.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// How long a delivery an engine could not sign waits before it is looked at again (by any
/// engine): a minute.
pub const RELEASE_WAIT_MS: i64 = 60_000;
/// The most webhooks one template may have.
pub const MAX_WEBHOOKS: usize = 16;
/// The most attempts a webhook's `retry.max_attempts` may ask for.
pub const MAX_WEBHOOK_ATTEMPTS: u32 = 100;

/// The retries of a webhook that sets no `retry`: 8 attempts, 1 s doubling to 5 min, jittered.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        ..RetryPolicy::default()
    }
}

/// One webhook of a template, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// The lifecycle events it is sent for: names or globs (`task.*`, `*.failed`), each
    /// matching at least one event name.
    pub on: Vec<String>,
    /// Where to POST: an `http` or `https` URL.
    pub url: String,
    /// The environment variable holding the secret that signs each body (`X-Tasker-Signature`);
    /// read by the delivering engine, at each delivery. Unsigned when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// The time limit of one delivery, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How failed deliveries are retried (default [`default_retry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// A webhook checked, as a delivery keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Bit `i` set when event `events::names::ALL[i]` is sent.
    pub on: u64,
    /// Where to POST.
    pub url: String,
    /// The environment variable of the signing secret.
    pub secret_env: Option<String>,
    /// The time limit of one delivery, in milliseconds.
    pub timeout_ms: u64,
    /// Its retries.
    pub retry: RetryPolicy,
}

impl Webhook {
    /// `spec` (webhook `n` of its template) checked.
    pub fn compile(spec: &WebhookSpec, n: usize) -> Result<Webhook, String> {
        let what = format!("webhook {n}");
        if spec.on.is_empty() {
            return Err(format!("{what}: `on` names no event"));
        }
        let mut on = 0u64;
        for pattern in &spec.on {
            let mask = crate::events::known_mask(pattern).map_err(|e| format!("{what}: {e}"))?;
            if mask == 0 {
                return Err(format!(
                    "{what}: {pattern:?} matches no lifecycle event (task.completed, step.failed, …)"
                ));
            }
            on |= mask;
        }
        let url = url::Url::parse(&spec.url)
            .map_err(|e| format!("{what}: url {:?} is not a URL: {e}", spec.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!(
                "{what}: url {:?} is not an http or https URL with a host",
                spec.url
            ));
        }
        if let Some(name) = &spec.secret_env {
            let ok = name
                .bytes()
                .enumerate()
                .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || i > 0 && b.is_ascii_digit());
            if name.is_empty() || !ok {
                return Err(format!(
                    "{what}: secret_env {name:?} is not an environment variable name"
                ));
            }
        }
        let timeout_ms = spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "{what}: timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"
            ));
        }
        let retry = spec.retry.unwrap_or_else(default_retry);
        if retry.max_attempts == 0 || retry.max_attempts > MAX_WEBHOOK_ATTEMPTS {
            return Err(format!(
                "{what}: retry.max_attempts must be between 1 and {MAX_WEBHOOK_ATTEMPTS}"
            ));
        }
        Ok(Webhook {
            on,
            url: url.to_string(),
            secret_env: spec.secret_env.clone(),
            timeout_ms,
            retry,
        })
    }

    /// The checks made only when `spec` (webhook `n`) is registered, on top of
    /// [`Webhook::compile`] (which also reads back stored templates): a URL without a user or
    /// password (it would be kept in every delivery and its log lines), a retry policy as a
    /// step's must be.
    pub fn check_new(spec: &WebhookSpec, n: usize) -> Result<(), String> {
        let what = format!("webhook {n}");
        if let Ok(url) = url::Url::parse(&spec.url) {
            if !url.username().is_empty() || url.password().is_some() {
                return Err(format!(
                    "{what}: url must not carry a user or password (it is kept in every \
                     delivery and its log lines); receivers check the X-Tasker-Signature instead"
                ));
            }
        }
        let retry = spec.retry.unwrap_or_else(default_retry);
        match retry.problem(MAX_WEBHOOK_ATTEMPTS) {
            Some(problem) => Err(format!("{what}: retry.{problem}")),
            None => Ok(()),
        }
    }

    /// Whether it is sent for event `name`.
    pub fn wants(&self, name: &str) -> bool {
        crate::events::known_index(name).is_some_and(|i| self.on & (1 << i) != 0)
    }

    /// How long a delivery is leased: twice its time limit.
    pub fn lease_ms(&self) -> u64 {
        self.timeout_ms.saturating_mul(2)
    }
}

/// A delivery to write: one event for one webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// Its id, sent as the `Idempotency-Key` (a UUID v7).
    pub id: String,
    /// The task whose event it is.
    pub task_id: TaskId,
    /// The event's name.
    pub event: &'static str,
    /// The webhook.
    pub hook: Arc<Webhook>,
    /// The JSON body.
    pub body: String,
    /// When the event happened (the delivery is due then).
    pub at: Timestamp,
}

/// The deliveries the events of `transitions` make (see [`crate::Engine`]'s event names), for
/// the tasks whose template has webhooks: the body is the event as subscribers see it, with
/// the delivery's `id` and the task's `namespace` and `task_name`.
pub(crate) fn deliveries_of(transitions: &[Transition]) -> Vec<NewDelivery> {
    let mut out = Vec::new();
    for (i, t) in transitions.iter().enumerate() {
        let Some(of) = t.task.as_ref().filter(|of| !of.webhooks.is_empty()) else {
            continue;
        };
        for (name, error) in crate::engine::event_names(transitions, i)
            .into_iter()
            .flatten()
        {
            for hook in of.webhooks.iter().filter(|h| h.wants(name)) {
                let id = uuid::Uuid::now_v7().to_string();
                let mut body = crate::engine::event_of(t, name, error).to_json();
                if let Value::Object(map) = &mut body {
                    map.insert("id".into(), json!(id));
                    map.insert("namespace".into(), json!(&*of.namespace));
                    map.insert("task_name".into(), json!(&*of.name));
                }
                out.push(NewDelivery {
                    id,
                    task_id: t.task_id,
                    event: name,
                    hook: hook.clone(),
                    body: body.to_string(),
                    at: t.at,
                });
            }
        }
    }
    out
}

/// A delivery leased for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Its id (the `Idempotency-Key`).
    pub id: String,
    /// The event's name.
    pub event: String,
    /// The webhook.
    pub hook: Webhook,
    /// The JSON body.
    pub body: String,
    /// This attempt's number, from 1 (its fence).
    pub attempt: u32,
}

/// How one attempt at a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Delivered (a 2xx answer).
    Delivered,
    /// Failed; tried again at `at`.
    Retry {
        /// When.
        at: Timestamp,
        /// Why this attempt failed.
        error: String,
    },
    /// Not sent by this engine (it lacks the signing secret): pending again at `at`, for any
    /// engine, the attempt not counted.
    Release {
        /// When.
        at: Timestamp,
        /// Why it was not sent here.
        error: String,
    },
    /// Failed for good.
    Failed {
        /// Why.
        error: String,
    },
}

/// What a [`Settlement`] leaves of its delivery's row, as every store writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled<'a> {
    /// `pending`, `delivered` or `failed`.
    pub status: &'static str,
    /// When it is due next (unchanged when `None`).
    pub next_attempt_at: Option<Timestamp>,
    /// The error kept (cleared when `None`).
    pub error: Option<&'a str>,
    /// When it was delivered.
    pub delivered_at: Option<Timestamp>,
    /// The attempt is taken back (it was not sent).
    pub uncount: bool,
}

impl Settlement {
    /// The row this settlement leaves, at `now`.
    pub fn row(&self, now: Timestamp) -> Settled<'_> {
        let (status, next_attempt_at, error, uncount) = match self {
            Settlement::Delivered => ("delivered", None, None, false),
            Settlement::Retry { at, error } => ("pending", Some(*at), Some(error.as_str()), false),
            Settlement::Release { at, error } => ("pending", Some(*at), Some(error.as_str()), true),
            Settlement::Failed { error } => ("failed", None, Some(error.as_str()), false),
        };
        Settled {
            status,
            next_attempt_at,
            error,
            delivered_at: (*self == Settlement::Delivered).then_some(now),
            uncount,
        }
    }
}

/// A delivery as [`crate::Engine::webhook_deliveries`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// Its id (the `Idempotency-Key`).
    pub id: String,
    /// The task.
    pub task_id: TaskId,
    /// The event.
    pub event: String,
    /// Where it goes.
    pub url: String,
    /// `pending`, `delivering`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the event happened.
    pub created_at: Timestamp,
    /// When it was delivered.
    pub delivered_at: Option<Timestamp>,
}

/// What an attempt's answer (`Ok(status)`) or failure to get one (`Err(message)`) makes of
/// the delivery: delivered on 2xx; retried (while attempts are left) on a connection error, a
/// timeout, 408, 429 or 5xx; failed for good otherwise. `unit` is a random number in `[0, 1)`
/// for the backoff's jitter.
pub fn settle(
    answer: Result<u16, Attempted>,
    delivery: &Delivery,
    now: Timestamp,
    unit: f64,
) -> Settlement {
    let (error, retryable) = match answer {
        Ok(status) if (200..300).contains(&status) => return Settlement::Delivered,
        Ok(status) if (300..400).contains(&status) => {
            (format!("HTTP {status}: redirects are not followed"), false)
        }
        Ok(status) => (
            format!("HTTP {status}"),
            matches!(status, 408 | 429) || status >= 500,
        ),
        Err(Attempted::Failed(message)) => (message, true),
        Err(Attempted::Refused(message)) => (message, false),
        Err(Attempted::NotHere(error)) => {
            return Settlement::Release {
                at: crate::clock::add_signed_ms(now, RELEASE_WAIT_MS),
                error,
            };
        }
    };
    let kind = if retryable {
        crate::retry::FailureKind::Retryable {
            retry_after_ms: None,
        }
    } else {
        crate::retry::FailureKind::Permanent
    };
    let retry = delivery.hook.retry;
    match retry.decide(delivery.attempt, retry.max_attempts, kind, unit) {
        crate::retry::RetryDecision::RetryAfter { delay_ms } => Settlement::Retry {
            at: crate::clock::add_ms(now, delay_ms),
            error,
        },
        crate::retry::RetryDecision::GiveUp { .. } => Settlement::Failed { error },
    }
}

/// Why an attempt got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// Connecting, sending or reading failed, or the time limit passed: tried again.
    Failed(String),
    /// Not sent: the address is refused. Not tried again.
    Refused(String),
    /// Not sent by this engine: its environment lacks the signing secret. Left for another
    /// (or this one, once it has it), the attempt not counted.
    NotHere(String),
}

/// Why `ip` may not be sent to (unless private addresses are allowed), or `None`: loopback,
/// private (RFC 1918, unique local), link-local, shared (100.64.0.0/10), cloud metadata
/// (169.254.169.254, fd00:ec2::254, 100.100.100.200), reserved, unspecified, multicast or
/// broadcast — an IPv4 address carried in IPv6 (mapped, compatible, NAT64, 6to4) judged as
/// itself.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            if [a, b, c, d] == [169, 254, 169, 254] || [a, b, c, d] == [100, 100, 100, 200] {
                Some("a cloud metadata address")
            } else if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() {
                Some("a private address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if a == 100 && (64..128).contains(&b) {
                Some("a shared (carrier-grade NAT) address")
            } else if a == 0 {
                Some("an unspecified address")
            } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (18..20).contains(&b)) {
                Some("a reserved (IETF protocol or benchmarking) address")
            } else if v4.is_multicast() || v4.is_broadcast() || a >= 240 {
                Some("a multicast, broadcast or reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] {
                Some("a cloud metadata address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
                Some("a link-local (or site-local) address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address an IPv6 one carries, judged as itself: mapped (`::ffff:a.b.c.d`),
/// compatible (`::a.b.c.d`, not `::` or `::1`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:aabb:ccdd::`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let low = std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some(v4)
    } else if (s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1))
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        Some(low)
    } else if s[0] == 0x2002 {
        Some(std::net::Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`, as `X-Tasker-Signature` carries
/// it. A receiver computes the same over the raw body and compares in constant time.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // An HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The resolver of the webhook client: resolves as the system does, and refuses a host any of
/// whose addresses is [`forbidden`] (the connection goes to the addresses checked here).
#[derive(Debug)]
struct Guard;

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((ip, why)) = addrs
                .iter()
                .find_map(|a| forbidden(a.ip()).map(|why| (a.ip(), why)))
            {
                return Err(Box::new(RefusedHost(format!(
                    "refused: {host} resolves to {ip}, {why} (open the engine with \
                     allow_private_webhooks to allow it)"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A host refused by [`Guard`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RefusedHost(String);

/// Sends deliveries: one HTTP client, the address guard unless private addresses are allowed.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub(crate) fn new(allow_private: bool) -> Result<Sender, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("tasker-core/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(Guard));
        }
        let client = builder
            .build()
            .map_err(|e| format!("the webhook client: {e}"))?;
        Ok(Sender {
            client,
            allow_private,
        })
    }

    /// One attempt at `d`: the answer's status, or why there is none.
    pub(crate) async fn send(&self, d: &Delivery) -> Result<u16, Attempted> {
        let url = reqwest::Url::parse(&d.hook.url)
            .map_err(|e| Attempted::Refused(format!("url {:?}: {e}", d.hook.url)))?;
        // An address written in the URL is not resolved: checked here.
        if !self.allow_private {
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if let Some((ip, why)) = literal.and_then(|ip| forbidden(ip).map(|why| (ip, why))) {
                return Err(Attempted::Refused(format!(
                    "refused: {ip} is {why} (open the engine with allow_private_webhooks to \
                     allow it)"
                )));
            }
        }
        let mut request = self
            .client
            .post(url)
            .timeout(Duration::from_millis(d.hook.timeout_ms))
            .header("content-type", "application/json")
            .header("idempotency-key", &d.id)
            .header("x-tasker-event", &d.event)
            .header("x-tasker-attempt", d.attempt.to_string());
        if let Some(name) = &d.hook.secret_env {
            // An empty value signs with an empty key, which anyone could forge: not set.
            let secret = std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Attempted::NotHere(format!(
                        "the signing secret's environment variable {name} is not set (or empty) \
                     where it was to be sent"
                    ))
                })?;
            request = request.header(
                "x-tasker-signature",
                signature(secret.as_encoded_bytes(), d.body.as_bytes()),
            );
        }
        match request.body(d.body.clone()).send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => {
                let mut source: Option<&dyn std::error::Error> = Some(&e);
                while let Some(s) = source {
                    if let Some(refused) = s.downcast_ref::<RefusedHost>() {
                        return Err(Attempted::Refused(refused.0.clone()));
                    }
                    source = s.source();
                }
                let what = if e.is_timeout() {
                    format!("timed out after {} ms", d.hook.timeout_ms)
                } else {
                    let mut message = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        message = format!("{message}: {s}");
                        source = s.source();
                    }
                    message
                };
                Err(Attempted::Failed(what))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn spec(on: &[&str], url: &str) -> WebhookSpec {
        WebhookSpec {
            on: on.iter().map(|s| s.to_string()).collect(),
            url: url.into(),
            secret_env: None,
            timeout_ms: None,
            retry: None,
        }
    }

    #[test]
    fn a_webhook_is_checked() {
        let hook =
            Webhook::compile(&spec(&["task.*", "step.failed"], "https://h.example/x"), 0).unwrap();
        assert!(hook.wants("task.completed") && hook.wants("step.failed"));
        assert!(!hook.wants("step.completed") && !hook.wants("order.custom"));
        assert_eq!((hook.timeout_ms, hook.retry.max_attempts), (10_000, 8));
        for (bad, says) in [
            (spec(&[], "https://h/x"), "names no event"),
            (
                spec(&["task.complete"], "https://h/x"),
                "matches no lifecycle event",
            ),
            (
                spec(&["task.completed"], "ftp://h/x"),
                "not an http or https URL",
            ),
            (spec(&["task.completed"], "not a url"), "is not a URL"),
            (
                WebhookSpec {
                    secret_env: Some("1BAD".into()),
                    ..spec(&["task.completed"], "https://h/x")
                },
                "not an environment variable name",
            ),
            (
                WebhookSpec {
                    timeout_ms: Some(120_000),
                    ..spec(&["task.completed"], "https://h/x")
                },
                "timeout_ms",
            ),
        ] {
            let e = Webhook::compile(&bad, 2).unwrap_err();
            assert!(e.starts_with("webhook 2: ") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_guard_refuses_internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::",
            "fec0::1",
            "192.0.0.8",
            "198.18.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(forbidden(ip).is_some(), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden(ip), None, "{ip}");
        }
        assert_eq!(
            forbidden("169.254.169.254".parse().unwrap()),
            Some("a cloud metadata address")
        );
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn delivery(attempt: u32, max_attempts: u32) -> Delivery {
        let mut hook = Webhook::compile(&spec(&["task.completed"], "https://h/x"), 0).unwrap();
        hook.retry.max_attempts = max_attempts;
        hook.retry.jitter = false;
        Delivery {
            id: "d".into(),
            event: "task.completed".into(),
            hook,
            body: "{}".into(),
            attempt,
        }
    }

    #[test]
    fn answers_settle_deliveries() {
        let now = Timestamp::default();
        let d = delivery(1, 3);
        assert_eq!(settle(Ok(204), &d, now, 0.5), Settlement::Delivered);
        for status in [500, 503, 429, 408] {
            assert!(
                matches!(settle(Ok(status), &d, now, 0.5), Settlement::Retry { .. }),
                "{status}"
            );
        }
        for status in [400, 404, 410, 301] {
            assert!(
                matches!(settle(Ok(status), &d, now, 0.5), Settlement::Failed { .. }),
                "{status}"
            );
        }
        let refused = settle(Err(Attempted::Refused("refused: x".into())), &d, now, 0.5);
        assert_eq!(
            refused,
            Settlement::Failed {
                error: "refused: x".into()
            }
        );
        match settle(Err(Attempted::Failed("reset".into())), &d, now, 0.5) {
            Settlement::Retry { at, error } => {
                assert_eq!(error, "reset");
                assert_eq!((at - now).num_milliseconds(), 1_000);
            }
            other => panic!("{other:?}"),
        }
        // The last attempt is not retried.
        let last = delivery(3, 3);
        assert!(matches!(
            settle(Ok(500), &last, now, 0.5),
            Settlement::Failed { .. }
        ));
    }

    proptest! {
        #[test]
        fn private_ranges_are_refused_however_written(
            a in 0u8..=255, b in 0u8..=255, c in 0u8..=255, d in 0u8..=255
        ) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            let internal = a == 10 || a == 127 || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168) || (a == 169 && b == 254)
                || (a == 100 && (64..128).contains(&b)) || a == 0 || a >= 224
                || (a == 192 && b == 0 && c == 0) || (a == 198 && (18..20).contains(&b))
                || v4 == Ipv4Addr::new(100, 100, 100, 200);
            prop_assert_eq!(forbidden(IpAddr::V4(v4)).is_some(), internal, "{}", v4);
            // The same address carried in IPv6 is judged the same: mapped, NAT64, 6to4.
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            prop_assert_eq!(forbidden(mapped).is_some(), internal, "{}", mapped);
            let [a, b, c, d] = v4.octets();
            let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
            for v6 in [Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo), Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1)] {
                prop_assert_eq!(forbidden(IpAddr::V6(v6)).is_some(), internal, "{}", v6);
            }
        }

        #[test]
        fn unique_local_and_link_local_v6_are_refused(rest in proptest::array::uniform7(0u16..)) {
            for first in [0xfc00u16, 0xfd12, 0xfe80, 0xfebf] {
                let ip = Ipv6Addr::new(first, rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6]);
                prop_assert!(forbidden(IpAddr::V6(ip)).is_some(), "{}", ip);
            }
        }
    }
}
