//! What protects the self-referral forms: a per-client rate limit (fixed
//! one-minute windows per IP address, bounded in memory) and CSRF tokens
//! (a random token in a `SameSite=Strict`, `HttpOnly` cookie that every
//! form posts back; a cross-site post has neither).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;

/// The CSRF cookie.
pub(crate) const CSRF_COOKIE: &str = "mskflow_selfref";

/// Most clients tracked at once; past it, the oldest windows are dropped.
const MAX_CLIENTS: usize = 100_000;

/// Requests allowed per client per window.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_window: u32,
    window: Duration,
    clients: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_window: per_minute,
            window: Duration::from_secs(60),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Count a request of `client` at `now`: `Err(seconds to wait)` once
    /// the client has used up its window.
    pub(crate) fn check(&self, client: IpAddr, now: Instant) -> Result<(), u64> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if clients.len() >= MAX_CLIENTS {
            let window = self.window;
            clients.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = clients.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_window {
            let wait = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(wait.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// The client's address (the connection's peer; forwarded-for headers are
/// not trusted).
pub(crate) fn client_ip(req: &HttpRequest) -> IpAddr {
    req.peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip())
}

/// A new CSRF token: 32 random hex digits.
pub(crate) fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The token of this client's cookie, if it has a well-formed one.
pub(crate) fn cookie_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value carrying `token` (`Secure` when the request came
/// over HTTPS).
pub(crate) fn cookie(req: &HttpRequest, token: &str) -> String {
    let secure = if req.connection_info().scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    format!("{CSRF_COOKIE}={token}; Path=/self-referral; HttpOnly; SameSite=Strict{secure}")
}

/// Whether a post carries the token of its cookie, and did not come from
/// another site.
pub(crate) fn valid_post(req: &HttpRequest, posted: Option<&str>) -> bool {
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site");
    match (cookie_token(req), posted) {
        (Some(cookie), Some(posted)) if !cross_site => {
            constant_time_eq(cookie.as_bytes(), posted.as_bytes())
        }
        _ => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_own_window() {
        let limiter = RateLimiter::new(2);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t = Instant::now();
        assert_eq!(limiter.check(a, t), Ok(()));
        assert_eq!(limiter.check(a, t), Ok(()));
        assert!(
            limiter
                .check(a, t + Duration::from_secs(1))
                .is_err_and(|w| w == 59)
        );
        assert_eq!(limiter.check(b, t), Ok(()));
        assert_eq!(limiter.check(a, t + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(new_token().len(), 32);
    }
}
