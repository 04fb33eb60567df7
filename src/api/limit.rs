//! Applying rate limits to requests: the client address (trusting forwarding headers only
//! from configured proxies), bucket keys, and the `RateLimit` headers.

use std::net::IpAddr;

use actix_web::dev::ServiceResponse;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest};
use ring::digest;

use crate::config::RateLimitSettings;
use crate::limits::rate::{parse_policy, Decision, Limiter, Policy};

/// The configured policies, parsed once.
#[derive(Debug, Clone, Copy)]
pub struct Policies {
    pub enabled: bool,
    pub login_per_ip: Policy,
    pub login_per_account: Policy,
    pub register_per_ip: Policy,
    pub refresh_per_ip: Policy,
    pub admin_per_user: Policy,
    pub forwarded_header: ForwardedHeader,
}

impl Policies {
    pub fn from_settings(s: &RateLimitSettings) -> Result<Policies, String> {
        Ok(Policies {
            enabled: s.enabled,
            login_per_ip: parse_policy("login-ip", &s.login_per_ip)?,
            login_per_account: parse_policy("login-account", &s.login_per_account)?,
            register_per_ip: parse_policy("register-ip", &s.register_per_ip)?,
            refresh_per_ip: parse_policy("refresh-ip", &s.refresh_per_ip)?,
            admin_per_user: parse_policy("admin-user", &s.admin_per_user)?,
            forwarded_header: match s.forwarded_header.as_str() {
                "x-forwarded-for" => ForwardedHeader::XForwardedFor,
                "forwarded" => ForwardedHeader::Forwarded,
                other => return Err(format!("rate_limits.forwarded_header: {other:?} is neither x-forwarded-for nor forwarded")),
            },
        })
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the
/// forwarding chain is read right to left and the first untrusted hop is the client. A
/// header from an untrusted peer changes nothing (it is trivially spoofed).
pub fn client_ip(req: &HttpRequest, state: &super::AppState) -> Option<IpAddr> {
    address_of(req, &state.trusted_proxies, state.policies.forwarded_header)
}

/// Which forwarding header the trusted proxies write. Only that one is read: a proxy that
/// appends to `X-Forwarded-For` passes a client's own `Forwarded` header through untouched,
/// so reading both would let a client choose its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

fn address_of(
    req: &HttpRequest,
    trusted: &[ipnet::IpNet],
    header: ForwardedHeader,
) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let chain = forwarded_chain(req, header);
    for hop in chain.iter().rev() {
        if !is_trusted(hop) {
            return Some(*hop);
        }
    }
    Some(chain.first().copied().unwrap_or(peer))
}

/// Hops named by the configured header (`X-Forwarded-For`, or RFC 7239 `Forwarded`
/// `for=`), left to right. Unparseable entries (obfuscated identifiers, `unknown`) are skipped.
fn forwarded_chain(req: &HttpRequest, header: ForwardedHeader) -> Vec<IpAddr> {
    let headers = req.headers();
    let values = |name: &str| {
        headers
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    if header == ForwardedHeader::Forwarded {
        return values("forwarded")
            .split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(v.trim().trim_matches('"')))?
                })
            })
            .collect();
    }
    values("x-forwarded-for")
        .split(',')
        .filter_map(|v| parse_node(v.trim()))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`, `[2001:db8::1]:443`, `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    text.rsplit_once(':')
        .and_then(|(ip, port)| port.parse::<u16>().ok().and(ip.parse().ok()))
}

/// The bucket for an address: IPv4 as is, IPv6 by its /64 (one customer's allocation).
pub fn ip_bucket(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "unknown".into(),
    }
}

/// An account's bucket: the SHA-256 of the normalised e-mail, so Redis never holds
/// addresses and every spelling of one address shares a bucket.
pub fn account_bucket(email: &str) -> String {
    let normalised = crate::domain::Email::parse(email)
        .map(|e| e.as_str().to_owned())
        .unwrap_or_else(|_| email.trim().to_lowercase());
    digest::digest(&digest::SHA256, normalised.as_bytes()).as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks the buckets; the decision is kept on the request so the response gets the
/// `RateLimit` headers whatever the handler answers.
pub async fn enforce(
    req: &HttpRequest,
    limiter: &Limiter,
    policies: &Policies,
    buckets: &[(Policy, String)],
    lock: Option<&str>,
) -> Result<(), Decision> {
    if !policies.enabled {
        return Ok(());
    }
    let decision = limiter.check(buckets, lock).await;
    req.extensions_mut().insert(decision);
    if decision.allowed {
        Ok(())
    } else {
        tracing::info!(
            policy = decision.policy.name,
            retry_after = decision.retry_after_secs,
            "rate limited"
        );
        Err(decision)
    }
}

/// Adds `RateLimit-Policy` / `RateLimit` (draft-ietf-httpapi-ratelimit-headers) and, on a
/// refusal, `Retry-After`.
pub fn add_headers<B>(res: &mut ServiceResponse<B>) {
    let Some(d) = res.request().extensions().get::<Decision>().copied() else {
        return;
    };
    let headers = res.headers_mut();
    let window = d.policy.period.as_secs().max(1);
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("ratelimit-policy", format!("{};w={window}", d.policy.limit));
    put(
        "ratelimit",
        format!(
            "limit={}, remaining={}, reset={}",
            d.policy.limit, d.remaining, d.reset_secs
        ),
    );
    if !d.allowed {
        put("retry-after", d.retry_after_secs.max(1).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_nodes_parse_in_every_form() {
        assert_eq!(parse_node("192.0.2.1"), "192.0.2.1".parse().ok());
        assert_eq!(parse_node("192.0.2.1:8080"), "192.0.2.1".parse().ok());
        assert_eq!(parse_node("[2001:db8::1]:443"), "2001:db8::1".parse().ok());
        assert_eq!(parse_node("2001:db8::1"), "2001:db8::1".parse().ok());
        assert_eq!(parse_node("_hidden"), None);
        assert_eq!(parse_node("unknown"), None);
    }

    #[test]
    fn ipv6_clients_share_their_64_and_accounts_hash_their_normalised_email() {
        let a = ip_bucket("2001:db8:1:2:aaaa::1".parse().ok());
        let b = ip_bucket("2001:db8:1:2:bbbb::9".parse().ok());
        assert_eq!(a, b);
        assert_ne!(a, ip_bucket("2001:db8:1:3::1".parse().ok()));
        assert_eq!(ip_bucket("::ffff:192.0.2.7".parse().ok()), "192.0.2.7");
        assert_eq!(
            account_bucket("Alice@Example.COM "),
            account_bucket("alice@example.com")
        );
        assert_eq!(
            account_bucket("ａｌｉｃｅ@example.com"),
            account_bucket("alice@example.com")
        );
        assert!(!account_bucket("alice@example.com").contains("alice"));
    }
}
