//! Where agents and coordinators reach each other: broker URLs, the coordinator's API URL,
//! reconnect pacing, and the wall clock every message is stamped with. No I/O, shared so
//! both sides accept exactly the same addresses.

use std::time::Duration;

/// What is wrong with a broker or API URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`{0}` must start with mqtts:// (TLS is required)")]
    NotMqtts(String),
    #[error("`{0}` has no port")]
    NoPort(String),
    #[error("`{0}` has an invalid port")]
    BadPort(String),
    #[error("`{0}` needs a host and a port")]
    NoHostOrPort(String),
    #[error("`{0}` must start with https:// (or http:// to a loopback address)")]
    NotHttp(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error(
        "`{0}` is plain HTTP to a non-loopback address: use https:// (tokens and bundles must not cross a network in the clear)"
    )]
    PlainHttp(String),
}

/// Splits `mqtts://host:port` into host and port. Plain `mqtt://` is refused: every broker
/// hop is TLS with client certificates.
pub fn parse_mqtts_url(url: &str) -> Result<(String, u16), UrlError> {
    let rest = url.strip_prefix("mqtts://").ok_or_else(|| UrlError::NotMqtts(url.to_owned()))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| UrlError::NoPort(url.to_owned()))?;
    let port: u16 = port.parse().map_err(|_| UrlError::BadPort(url.to_owned()))?;
    if host.is_empty() || port == 0 {
        return Err(UrlError::NoHostOrPort(url.to_owned()));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// Checks a coordinator API URL: `https://` anywhere, `http://` only to a loopback address
/// (tokens and bundles must not cross a network in the clear). Returns whether it is HTTPS.
pub fn check_api_url(url: &str) -> Result<bool, UrlError> {
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => return Err(UrlError::NotHttp(url.to_owned())),
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() {
        return Err(UrlError::NoHost(url.to_owned()));
    }
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if tls || loopback { Ok(tls) } else { Err(UrlError::PlainHttp(url.to_owned())) }
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wait before reconnect attempt `attempt` (0-based): exponential from 250 ms to 30 s, with
/// ±25 % jitter so a fleet that lost its broker does not reconnect in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(7)).min(30_000);
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    let jitter = (f64::from(byte[0]) / 255.0 - 0.5) * 0.5;
    Duration::from_millis((base as f64 * (1.0 + jitter)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_must_be_tls() {
        assert_eq!(parse_mqtts_url("mqtts://b.example:8883").unwrap(), ("b.example".into(), 8883));
        assert_eq!(parse_mqtts_url("mqtts://[::1]:8883").unwrap(), ("::1".into(), 8883));
        assert!(parse_mqtts_url("mqtt://b:1883").unwrap_err().to_string().contains("TLS"));
        assert!(parse_mqtts_url("mqtts://b").is_err());
        assert!(parse_mqtts_url("mqtts://:1").is_err());
    }

    #[test]
    fn plain_http_only_to_loopback_https_anywhere() {
        assert_eq!(check_api_url("http://127.0.0.1:7400"), Ok(false));
        assert_eq!(check_api_url("http://localhost:7400/"), Ok(false));
        assert_eq!(check_api_url("http://[::1]:7400"), Ok(false));
        assert!(check_api_url("http://10.0.0.5:7400").unwrap_err().to_string().contains("non-loopback"));
        assert_eq!(check_api_url("https://coord.example"), Ok(true));
        assert!(check_api_url("ftp://x").is_err());
        assert!(check_api_url("https://").is_err());
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert!(backoff(0) <= Duration::from_millis(320));
        assert!(backoff(3) >= Duration::from_millis(1500));
        assert!(backoff(50) <= Duration::from_millis(37_500));
    }
}
