//! Talking to Loki over HTTP: one client (tenant, auth, TLS, proxies from the environment,
//! gzip), the two query endpoints, and the retry policy.
//!
//! Loki's error answers are `text/plain`: 400 for a query or limit it refuses (shown to the
//! user as Loki wrote it; never retried), 401 `no org id` when a multi-tenant Loki gets no
//! `X-Scope-OrgID`, 429 `too many outstanding requests` when the query frontend's queue is
//! full, 5xx when a querier fails or a query times out (504). 429, 5xx and transport
//! failures are retried with exponential backoff and full jitter, a bounded number of
//! times, waiting at least what `Retry-After` asks; every wait also respects the overall
//! deadline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

use super::paging::{Entry, PageRequest};
use super::response::{self, Sample};

/// How to reach Loki; built and checked once by [`LokiClient::build`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The base URL, e.g. `http://loki-gateway.monitoring:3100`.
    pub url: String,
    /// `X-Scope-OrgID`, for a multi-tenant Loki.
    pub tenant: Option<String>,
    pub auth: Auth,
    /// Extra PEM CA certificates to trust.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub retry: RetryPolicy,
    /// Per request, connecting through reading the body.
    pub request_timeout: Duration,
}

/// HTTP authentication.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    /// `Authorization: Bearer` with the token read from a file (a mounted secret).
    Bearer(String),
    Basic {
        user: String,
        password: String,
    },
}

/// Bounded retries of transient failures.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// The first backoff; each retry doubles it, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// No request runs and no wait extends past this.
    pub deadline: Instant,
}

/// A request that did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Loki refused the request; retrying cannot help.
    #[error("Loki answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// Transient failures outlasted the retries or the deadline.
    #[error("gave up after {attempts} attempt(s): {last}")]
    GaveUp { attempts: u32, last: String },
    /// The answer was not Loki's documented shape.
    #[error("unreadable answer: {0}")]
    Decode(String),
}

/// Why a request was not (or no longer) retried when the deadline came first.
const OUT_OF_TIME: &str = "the overall --loki-timeout passed";

/// A configured connection to one Loki.
pub struct LokiClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    retry: RetryPolicy,
    request_timeout: Duration,
}

impl LokiClient {
    /// Builds the HTTP client, reading CA, certificate and key files now so a wrong path
    /// fails before any query.
    pub fn build(config: &ClientConfig) -> Result<LokiClient, String> {
        let mut builder = reqwest::Client::builder()
            .default_headers(headers(config)?)
            .timeout(config.request_timeout)
            .gzip(true)
            .user_agent(concat!("logwarden/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("--loki-ca {}: {e}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("--loki-ca {}: {e}", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &config.client_cert {
            let mut pem = std::fs::read(cert).map_err(|e| format!("--loki-cert {}: {e}", cert.display()))?;
            pem.extend(std::fs::read(key).map_err(|e| format!("--loki-key {}: {e}", key.display()))?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| format!("--loki-cert/--loki-key: {e}"))?;
            builder = builder.identity(id);
        }
        let http = builder.build().map_err(|e| format!("--loki: {e}"))?;
        let base = config.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("--loki {:?}: expected an http:// or https:// URL", config.url));
        }
        Ok(LokiClient {
            http,
            base,
            auth: config.auth.clone(),
            retry: config.retry,
            request_timeout: config.request_timeout,
        })
    }

    /// One page of a log query.
    pub async fn query_range(&self, query: &str, r: PageRequest) -> Result<Vec<Entry>, FetchError> {
        let params = [
            ("query", query.to_string()),
            // Integer nanoseconds: a float would be read as seconds (rounded to ms), and
            // an integer of up to 10 digits as seconds.
            ("start", r.start.to_string()),
            ("end", r.end.to_string()),
            ("limit", r.limit.to_string()),
            ("direction", r.direction.as_str().to_string()),
        ];
        let body = self.get("/loki/api/v1/query_range", &params).await?;
        response::decode_streams(&body).map_err(|e| FetchError::Decode(e.0))
    }

    /// A metric query evaluated from `start` to `end` (inclusive) every `step` ns; each
    /// series with its largest value.
    pub async fn query_range_metric(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Sample>, FetchError> {
        let params = [
            ("query", query.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            // A float number of seconds, as the API documents for `step`.
            ("step", format!("{}", step as f64 / 1e9)),
        ];
        let body = self.get("/loki/api/v1/query_range", &params).await?;
        response::decode_matrix(&body).map_err(|e| FetchError::Decode(e.0))
    }

    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Vec<u8>, FetchError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A request in flight is cut at the deadline too, so the scan ends within
            // --loki-timeout rather than up to a request timeout after it.
            let left = self.retry.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FetchError::GaveUp { attempts: attempt - 1, last: OUT_OF_TIME.into() });
            }
            let request = self.http.get(&url).query(params).timeout(left.min(self.request_timeout));
            let failure = match self.authorize(request).send().await {
                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                    Ok(body) => return Ok(body.to_vec()),
                    Err(e) => Transient { message: format!("reading the answer: {e}"), retry_after: None },
                },
                Ok(resp) => classify(resp).await?,
                Err(e) => Transient { message: transport_message(&e), retry_after: None },
            };
            let wait = self.backoff(attempt, failure.retry_after);
            let out_of_time = Instant::now() + wait >= self.retry.deadline;
            if attempt >= self.retry.attempts || out_of_time {
                let last = match out_of_time {
                    true => format!("{}; {OUT_OF_TIME}", failure.message),
                    false => failure.message,
                };
                return Err(FetchError::GaveUp { attempts: attempt, last });
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token.trim()),
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
        }
    }

    /// Full jitter over an exponential ceiling, but never shorter than `Retry-After`.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling =
            self.retry.backoff.saturating_mul(1 << (attempt - 1).min(16)).min(self.retry.max_backoff);
        let jittered = ceiling.mul_f64(jitter());
        retry_after.map_or(jittered, |ra| ra.max(jittered))
    }
}

struct Transient {
    message: String,
    retry_after: Option<Duration>,
}

/// Sorts an error answer into retryable or final, keeping Loki's own text.
async fn classify(resp: reqwest::Response) -> Result<Transient, FetchError> {
    let status = resp.status();
    let retry_after = resp.headers().get(RETRY_AFTER).and_then(parse_retry_after);
    let text = resp.text().await.unwrap_or_default();
    let message = format!("{status}: {}", text.trim());
    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    if retryable {
        Ok(Transient { message, retry_after })
    } else {
        let hint = match status {
            StatusCode::UNAUTHORIZED if text.contains("no org id") => {
                " (this Loki is multi-tenant: pass --loki-tenant)"
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => " (check --loki-token-file or --loki-user)",
            StatusCode::BAD_REQUEST if text.contains("the query time range exceeds the limit") => {
                " (give --loki-max-query-length no longer than the limit Loki names)"
            }
            _ => "",
        };
        Err(FetchError::Refused { status: status.as_u16(), message: format!("{}{hint}", text.trim()) })
    }
}

/// `Retry-After` in delta-seconds; an HTTP date is honoured as "later" with the backoff.
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    v.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn transport_message(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn headers(config: &ClientConfig) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    // Loki 3 then keeps structured metadata out of the stream labels, so one stream
    // stays one stream; older servers ignore the header.
    h.insert("X-Loki-Response-Encoding-Flags", HeaderValue::from_static("categorize-labels"));
    if let Some(t) = &config.tenant {
        let v =
            HeaderValue::from_str(t).map_err(|_| format!("--loki-tenant {t:?}: not a valid header value"))?;
        h.insert("X-Scope-OrgID", v);
    }
    Ok(h)
}

/// A number in `[0.5, 1)`: half the backoff is fixed so retries never bunch at zero.
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let h = std::collections::hash_map::RandomState::new().hash_one(nanos);
    0.5 + (h >> 11) as f64 / (1u64 << 53) as f64 / 2.0
}
