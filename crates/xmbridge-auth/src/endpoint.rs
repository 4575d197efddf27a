//! The rules every client (Qualtrics, Salesforce, ServiceNow, the token calls here) applies where
//! its data meets the network, kept in one place so they cannot drift apart:
//!
//! - credentials only travel over `https`; plain `http` is allowed for loopback hosts only (the
//!   simulators) — [`check_credential_url`], [`is_loopback_host`];
//! - a host name is a DNS name (labels of at most 63 characters, 253 in all) — [`check_host_name`];
//! - a token, client id, secret or user name is one line of text that fits in an HTTP header or a
//!   form field — [`check_credential_text`];
//! - text an upstream answered (an error message, an error body) is cut to a bounded length
//!   before it becomes part of an error or a log line — [`upstream_text`], [`upstream_bytes`].
//!
//! The checks run before any network use, so a refused URL is never contacted.

use std::net::IpAddr;

use url::Url;

use crate::AuthError;

/// How much upstream text an error or log line keeps, in bytes (about one screen).
pub const UPSTREAM_TEXT_LIMIT: usize = 1024;

/// True for `127.0.0.0/8`, `::1` (with or without brackets), `localhost` and `*.localhost`: the
/// only hosts plain `http` is allowed for.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// Whether a URL may carry credentials: `https`, or `http` to a loopback host; its host an IP
/// literal or a valid DNS name ([`check_host_name`]); no `user:password@` part. `what` names the
/// URL in the message ("token URL", "ServiceNow instance URL" …).
pub fn check_credential_url(what: &str, url: &Url) -> Result<(), AuthError> {
    let shown = shorten(url.as_str(), 120);
    let host = match url.host() {
        Some(url::Host::Domain(d)) => {
            check_host_name(d).map_err(|reason| {
                AuthError::Config(format!(
                    "the {what} {shown} does not name a valid host: {reason}; give the host name exactly as the provider shows it"
                ))
            })?;
            d.to_string()
        }
        Some(h) => h.to_string(),
        None => {
            return Err(AuthError::Config(format!(
                "the {what} {shown} has no host; give an https:// URL with a host name"
            )));
        }
    };
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&host) => {}
        "http" => {
            return Err(AuthError::Config(format!(
                "the {what} {shown} uses plain http://, so the credentials would travel unencrypted; credentials are only sent over https: use https://{host} (plain http is only allowed for loopback simulators such as http://127.0.0.1:PORT)"
            )));
        }
        other => {
            return Err(AuthError::Config(format!(
                "the {what} {shown} has an unsupported scheme '{other}'; use https://{host}"
            )));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(AuthError::Config(format!(
            "the {what} for {host} carries credentials; remove the 'user:password@' part and pass the credentials with their own options"
        )));
    }
    Ok(())
}

/// Checks that `host` is a DNS name: at most 253 characters, labels of 1–63 letters, digits,
/// `-` (not first or last) and `_`, one trailing dot allowed. IP literals are the caller's
/// business (they never reach here through [`check_credential_url`]). The reason never quotes a
/// long host whole.
pub fn check_host_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("the host name is empty".into());
    }
    for label in name.split('.') {
        let len = label.chars().count();
        if len == 0 {
            return Err(format!(
                "'{}' has an empty label (two dots in a row, or a leading dot)",
                shorten(host, 60)
            ));
        }
        if len > 63 {
            return Err(format!(
                "the label '{}' is {len} characters long; DNS allows at most 63 per label",
                shorten(label, 20)
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "'{}' contains {c:?}; a host name has only letters, digits, '-' and '.'",
                shorten(host, 60)
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "the label '{}' starts or ends with '-'",
                shorten(label, 20)
            ));
        }
    }
    let chars = name.chars().count();
    if chars > 253 {
        return Err(format!(
            "the host name is {chars} characters long; DNS allows at most 253"
        ));
    }
    Ok(())
}

/// Checks that a token, client id, secret, user name or pass phrase is one line of text that
/// can go into an HTTP header or form field: not empty, no control characters (NUL, line
/// breaks, tabs …). `what` names it ("API token", "client id" …); the value is never quoted.
pub fn check_credential_text(what: &str, value: &str) -> Result<(), AuthError> {
    if value.is_empty() {
        return Err(AuthError::Config(format!("the {what} is empty")));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        let kind = match c {
            '\0' => "a NUL byte".to_string(),
            '\n' | '\r' => "a line break".to_string(),
            '\t' => "a tab".to_string(),
            c => format!("the control character U+{:04X}", c as u32),
        };
        return Err(AuthError::Config(format!(
            "the {what} contains {kind}, but it must be a single line of printable text; check where it came from"
        )));
    }
    Ok(())
}

/// `text` cut to [`UPSTREAM_TEXT_LIMIT`] bytes (at a character boundary) with
/// "… (N bytes more)" appended when cut: for error messages and bodies an upstream answered, so
/// a huge answer cannot flood errors, logs and stored error columns.
pub fn upstream_text(text: &str) -> String {
    if text.len() <= UPSTREAM_TEXT_LIMIT {
        return text.to_string();
    }
    let mut end = UPSTREAM_TEXT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes more)", &text[..end], text.len() - end)
}

/// Like [`upstream_text`] for a raw body (invalid UTF-8 is replaced).
pub fn upstream_bytes(body: &[u8]) -> String {
    upstream_text(&String::from_utf8_lossy(body))
}

/// The first `max` characters of `s`, with "…" when cut (for quoting input in messages).
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
            "fra1.localhost",
            "localhost.",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.5",
            "example.com",
            "localhost.example.com",
            "[::2]",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn credential_urls() {
        for ok in [
            "https://acme.service-now.com",
            "http://127.0.0.1:9",
            "http://localhost:9/x",
            "http://[::1]:9",
            "https://10.0.0.5",
        ] {
            check_credential_url("URL", &u(ok)).unwrap();
        }
        let e =
            check_credential_url("instance URL", &u("http://acme.service-now.com")).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("plain http") && m.contains("use https://acme.service-now.com"),
            "{m}"
        );
        assert!(check_credential_url("URL", &u("http://10.0.0.5")).is_err());
        assert!(check_credential_url("URL", &u("ftp://example.com")).is_err());
        assert!(check_credential_url("URL", &u("https://u:p@example.com")).is_err());
        let long = format!("https://{}.example.com", "a".repeat(3000));
        let m = check_credential_url("URL", &u(&long))
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("3000 characters long; DNS allows at most 63") && m.len() < 600,
            "{m}"
        );
    }

    #[test]
    fn host_names() {
        for ok in [
            "a",
            "acme.service-now.com",
            "xn--bcher-kva.example",
            "a_b.example.",
            &format!("{}.com", "a".repeat(63)),
        ] {
            check_host_name(ok).unwrap();
        }
        let long_total = vec!["a".repeat(60); 5].join(".");
        for (bad, needle) in [
            ("", "empty"),
            ("a..b", "empty label"),
            (&format!("{}.com", "a".repeat(64)) as &str, "64 characters"),
            (&long_total, "at most 253"),
            ("-a.com", "starts or ends"),
            ("a b.com", "contains ' '"),
        ] {
            let m = check_host_name(bad).unwrap_err();
            assert!(m.contains(needle), "{bad:?}: {m}");
        }
    }

    #[test]
    fn credential_text() {
        check_credential_text("token", "abc DEF-123_~ü").unwrap();
        for (bad, needle) in [
            ("", "empty"),
            ("a\0b", "NUL"),
            ("a\nb", "line break"),
            ("a\r", "line break"),
            ("a\tb", "tab"),
            ("a\u{7f}", "U+007F"),
        ] {
            let m = check_credential_text("API token", bad)
                .unwrap_err()
                .to_string();
            assert!(m.contains(needle) && m.contains("API token"), "{m}");
            assert!(bad.is_empty() || !m.contains(bad), "{m}");
        }
    }

    #[test]
    fn upstream_text_is_bounded() {
        assert_eq!(upstream_text("short"), "short");
        let exact = "x".repeat(UPSTREAM_TEXT_LIMIT);
        assert_eq!(upstream_text(&exact), exact);
        let big = "é".repeat(3_000_000);
        let cut = upstream_text(&big);
        assert!(cut.len() < UPSTREAM_TEXT_LIMIT + 40, "{}", cut.len());
        assert!(cut.ends_with(" bytes more)"), "{cut}");
        let shown = cut.split('…').next().unwrap().len();
        assert!(cut.contains(&format!("({} bytes more)", big.len() - shown)));

        assert_eq!(upstream_bytes(b"short"), "short");
        let body = vec![b'y'; 5_000_000];
        let cut = upstream_bytes(&body);
        assert!(cut.starts_with(&"y".repeat(UPSTREAM_TEXT_LIMIT)));
        assert!(
            cut.ends_with(&format!(
                "… ({} bytes more)",
                5_000_000 - UPSTREAM_TEXT_LIMIT
            )),
            "{}",
            &cut[UPSTREAM_TEXT_LIMIT..]
        );
        let mut mixed = "é".repeat(2000).into_bytes();
        mixed.push(0xff);
        let cut = upstream_bytes(&mixed);
        assert!(cut.len() < UPSTREAM_TEXT_LIMIT + 40);
    }
}
