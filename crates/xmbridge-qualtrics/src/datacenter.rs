//! Data centers and base URLs (qualtrics-api.md §1).
//!
//! Users name their account in many ways: a data center id (`fra1`, legacy `co1`), the host they see
//! in the browser (`acme.ca1.qualtrics.com`), or a full URL copied from the address bar
//! (`https://acme.ca1.qualtrics.com/Q/MyProjectsSection`). All of them become one [`BaseUrl`]
//! `https://{host}/API/v3`. Plain `http://` is accepted only for loopback hosts (the simulators),
//! so an API token never travels unencrypted over a network.

use crate::error::Error;
use std::fmt;
use std::net::IpAddr;
use url::Url;

/// Legacy data-center ids still used by clients, and the id they mean today.
const ALIASES: &[(&str, &str)] = &[
    ("co1", "iad1"),
    ("az1", "sjc1"),
    ("eu", "fra1"),
    ("eu2", "fra1"),
    ("au1", "syd1"),
    ("ca1", "yul1"),
];

/// The official data centers (survey-definitions server list).
const OFFICIAL: &[&str] = &[
    "yul1", "iad1", "sjc1", "fra1", "lhr1", "syd1", "sin1", "hnd1", "gov1",
];

/// A Qualtrics data center, by its current id (`co1` is stored as `iad1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DataCenter(String);

impl DataCenter {
    /// Parses a data-center id such as `fra1`, `IAD1` or the legacy `co1`.
    ///
    /// Unknown ids of the right shape (`[a-z]{2,4}` plus at most one digit) are accepted because
    /// Qualtrics opens new data centers; anything else is an error.
    pub fn parse(id: &str) -> Result<DataCenter, Error> {
        let id = id.trim().to_ascii_lowercase();
        if !looks_like_dc(&id) {
            return Err(Error::InvalidDataCenter(format!(
                "'{id}' is not a Qualtrics data center id (examples: fra1, iad1, ca1)"
            )));
        }
        let canonical = ALIASES
            .iter()
            .find(|(alias, _)| *alias == id)
            .map(|(_, dc)| (*dc).to_string())
            .unwrap_or(id);
        Ok(DataCenter(canonical))
    }

    /// The current id, e.g. `iad1`.
    pub fn id(&self) -> &str {
        &self.0
    }

    /// Whether the id is on Qualtrics' published list (or a legacy alias of one).
    pub fn is_official(&self) -> bool {
        OFFICIAL.contains(&self.0.as_str())
    }

    /// `{id}.qualtrics.com`
    pub fn host(&self) -> String {
        format!("{}.qualtrics.com", self.0)
    }

    /// `https://{id}.qualtrics.com/API/v3`
    pub fn base_url(&self) -> BaseUrl {
        // The id matched `[a-z]{2,4}\d?` in `parse`, so this URL is always valid.
        let url = Url::parse(&format!("https://{}/API/v3", self.host()))
            .expect("a data-center id always forms a valid URL");
        BaseUrl(url)
    }

    /// The data center named by a host, if it names one: `acme.ca1.qualtrics.com` → `yul1`,
    /// `fra1.qualtrics.com` → `fra1`; vanity hosts (`acme.qualtrics.com`) name none.
    pub fn of_host(host: &str) -> Option<DataCenter> {
        let host = host.to_ascii_lowercase();
        let rest = host.strip_suffix(".qualtrics.com")?;
        let labels: Vec<&str> = rest.split('.').collect();
        match labels.as_slice() {
            [one] if is_known(one) || (looks_like_dc(one) && ends_with_digit(one)) => {
                DataCenter::parse(one).ok()
            }
            [_org, dc] if looks_like_dc(dc) => DataCenter::parse(dc).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for DataCenter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn ends_with_digit(s: &str) -> bool {
    s.ends_with(|c: char| c.is_ascii_digit())
}

fn is_known(label: &str) -> bool {
    OFFICIAL.contains(&label) || ALIASES.iter().any(|(a, _)| *a == label)
}

/// `[a-z]{2,4}\d?`
fn looks_like_dc(label: &str) -> bool {
    let letters = label.trim_end_matches(|c: char| c.is_ascii_digit());
    let digits = label.len() - letters.len();
    (2..=4).contains(&letters.len())
        && letters.chars().all(|c| c.is_ascii_lowercase())
        && digits <= 1
}

/// True for `127.0.0.0/8`, `::1`, `localhost` and `*.localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let h = h.to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// The root of the API, always ending in `/API/v3` (no trailing slash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(Url);

impl BaseUrl {
    /// Parses what a person types to name their account:
    ///
    /// - a data-center id: `fra1`, `co1` → `https://iad1.qualtrics.com/API/v3`
    /// - a host: `acme.ca1.qualtrics.com` → `https://acme.ca1.qualtrics.com/API/v3`
    /// - a URL with or without path: `https://acme.ca1.qualtrics.com/Q/MyProjectsSection`,
    ///   `acme.ca1.qualtrics.com/API/v3/` → same as above
    /// - a simulator: `http://127.0.0.1:4000` → `http://127.0.0.1:4000/API/v3`
    ///
    /// `http://` is refused unless the host is loopback.
    pub fn parse(input: &str) -> Result<BaseUrl, Error> {
        let input = input.trim();
        if input.is_empty() {
            return Err(Error::InvalidBaseUrl(
                "empty account URL; give a data center (fra1) or your account host (acme.ca1.qualtrics.com)".into(),
            ));
        }
        let bare = !input.contains("://");
        if bare && !input.contains('.') && !input.contains(':') && !input.contains('/') {
            // A lone label: a data-center id (or a typo of one).
            return DataCenter::parse(input).map(|dc| dc.base_url()).map_err(|_| {
                Error::InvalidBaseUrl(format!(
                    "'{input}' is neither a data center id (fra1, iad1, ca1 …) nor an account host (acme.ca1.qualtrics.com)"
                ))
            });
        }
        let with_scheme = if bare {
            format!("https://{input}")
        } else {
            input.to_string()
        };
        let url = Url::parse(&with_scheme)
            .map_err(|e| Error::InvalidBaseUrl(format!("'{input}' is not a valid URL: {e}")))?;
        let host = url
            .host_str()
            .ok_or_else(|| Error::InvalidBaseUrl(format!("'{input}' has no host name")))?
            .to_string();
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&host) => {}
            "http" => {
                return Err(Error::InvalidBaseUrl(format!(
                    "refusing plain http:// for {host}: the API token would travel unencrypted; use https:// (http is only allowed for loopback simulators such as http://127.0.0.1:PORT)"
                )));
            }
            other => {
                return Err(Error::InvalidBaseUrl(format!(
                    "'{input}': unsupported scheme '{other}', use https://"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::InvalidBaseUrl(format!(
                "'{host}': do not put credentials in the account URL; pass the API token separately"
            )));
        }
        let mut url = url;
        url.set_path("/API/v3");
        url.set_query(None);
        url.set_fragment(None);
        Ok(BaseUrl(url))
    }

    /// The full base, e.g. `https://fra1.qualtrics.com/API/v3`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &Url {
        &self.0
    }

    /// The host name (without port).
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }

    /// The data center the host names, if it names one.
    pub fn data_center(&self) -> Option<DataCenter> {
        DataCenter::of_host(self.host())
    }

    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.host())
    }

    /// The same base on another host (keeps scheme and port), for the "Request proxied" notice.
    pub fn with_host(&self, host: &str) -> Result<BaseUrl, Error> {
        let mut url = self.0.clone();
        url.set_host(Some(host))
            .map_err(|e| Error::InvalidBaseUrl(format!("'{host}' is not a valid host: {e}")))?;
        Ok(BaseUrl(url))
    }

    /// `{base}/{segments…}` with each segment percent-encoded (ids never break the path).
    pub fn join(&self, segments: &[&str]) -> Url {
        let mut url = self.0.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty();
            p.extend(segments);
        }
        url
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// The host named by a "Request proxied. For faster response times, use this host instead: X"
/// notice: the text after the last `": "`, if it looks like a Qualtrics host.
pub fn proxied_host(notice: &str) -> Option<String> {
    if !notice.starts_with("Request proxied") {
        return None;
    }
    let (_, host) = notice.rsplit_once(": ")?;
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.ends_with(".qualtrics.com")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    valid.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_center_ids_and_aliases() {
        assert_eq!(DataCenter::parse("fra1").unwrap().id(), "fra1");
        assert_eq!(DataCenter::parse(" IAD1 ").unwrap().id(), "iad1");
        assert_eq!(DataCenter::parse("co1").unwrap().id(), "iad1");
        assert_eq!(DataCenter::parse("az1").unwrap().id(), "sjc1");
        assert_eq!(DataCenter::parse("eu").unwrap().id(), "fra1");
        assert_eq!(DataCenter::parse("au1").unwrap().id(), "syd1");
        assert_eq!(DataCenter::parse("ca1").unwrap().id(), "yul1");
        assert!(DataCenter::parse("ca1").unwrap().is_official());
        assert!(
            DataCenter::parse("zz9").is_ok(),
            "new data centers are accepted"
        );
        assert!(DataCenter::parse("f").is_err());
        assert!(DataCenter::parse("fra12").is_err());
        assert!(DataCenter::parse("fra-1").is_err());
        assert_eq!(
            DataCenter::parse("co1").unwrap().base_url().as_str(),
            "https://iad1.qualtrics.com/API/v3"
        );
    }

    #[test]
    fn account_urls_as_users_paste_them() {
        let want = "https://acme.ca1.qualtrics.com/API/v3";
        for input in [
            "acme.ca1.qualtrics.com",
            "https://acme.ca1.qualtrics.com",
            "https://acme.ca1.qualtrics.com/",
            "https://acme.ca1.qualtrics.com/Q/MyProjectsSection",
            "acme.ca1.qualtrics.com/API/v3/",
            "  HTTPS://ACME.ca1.qualtrics.com/homepage/ui?x=1 ",
        ] {
            assert_eq!(BaseUrl::parse(input).unwrap().as_str(), want, "{input}");
        }
        let b = BaseUrl::parse("acme.ca1.qualtrics.com").unwrap();
        assert_eq!(b.data_center().unwrap().id(), "yul1");
        assert_eq!(
            BaseUrl::parse("fra1").unwrap().as_str(),
            "https://fra1.qualtrics.com/API/v3"
        );
        assert_eq!(
            BaseUrl::parse("acme.qualtrics.com").unwrap().data_center(),
            None
        );
        assert_eq!(
            BaseUrl::parse("fra1.qualtrics.com")
                .unwrap()
                .data_center()
                .unwrap()
                .id(),
            "fra1"
        );
    }

    #[test]
    fn http_only_for_loopback() {
        assert_eq!(
            BaseUrl::parse("http://127.0.0.1:4000").unwrap().as_str(),
            "http://127.0.0.1:4000/API/v3"
        );
        assert_eq!(
            BaseUrl::parse("http://127.0.0.1:4000/API/v3")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:4000/API/v3"
        );
        assert!(BaseUrl::parse("http://localhost:9").is_ok());
        assert!(BaseUrl::parse("http://fra1.localhost:9").is_ok());
        assert_eq!(
            BaseUrl::parse("http://[::1]:9").unwrap().as_str(),
            "http://[::1]:9/API/v3"
        );
        let err = BaseUrl::parse("http://acme.ca1.qualtrics.com").unwrap_err();
        assert!(err.to_string().contains("unencrypted"), "{err}");
        assert!(BaseUrl::parse("ftp://acme.ca1.qualtrics.com").is_err());
        assert!(BaseUrl::parse("https://u:p@acme.qualtrics.com").is_err());
        assert!(BaseUrl::parse("").is_err());
        assert!(BaseUrl::parse("not a dc").is_err());
    }

    #[test]
    fn join_encodes_segments() {
        let b = BaseUrl::parse("fra1").unwrap();
        assert_eq!(
            b.join(&["surveys", "SV_1", "export-responses"]).as_str(),
            "https://fra1.qualtrics.com/API/v3/surveys/SV_1/export-responses"
        );
        assert_eq!(
            b.join(&["surveys", "a/b?c"]).as_str(),
            "https://fra1.qualtrics.com/API/v3/surveys/a%2Fb%3Fc"
        );
    }

    #[test]
    fn proxy_notice() {
        assert_eq!(
            proxied_host(
                "Request proxied. For faster response times, use this host instead: fra1.qualtrics.com"
            ),
            Some("fra1.qualtrics.com".into())
        );
        assert_eq!(
            proxied_host("Request proxied: use this host instead: evil.example"),
            None
        );
        assert_eq!(proxied_host("Something else: fra1.qualtrics.com"), None);
        let b = BaseUrl::parse("https://acme.ca1.qualtrics.com").unwrap();
        assert_eq!(
            b.with_host("fra1.qualtrics.com").unwrap().as_str(),
            "https://fra1.qualtrics.com/API/v3"
        );
    }
}
