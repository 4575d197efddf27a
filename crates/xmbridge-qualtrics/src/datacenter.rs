//! Data centers and base URLs (docs/design/qualtrics-api.md §1).
//!
//! Users name their account in many ways: a data center id (`fra1`, legacy `co1`), the host they see
//! in the browser (`acme.ca1.qualtrics.com`), or a full URL copied from the address bar
//! (`https://acme.ca1.qualtrics.com/Q/MyProjectsSection`). All of them become one [`BaseUrl`]
//! `https://{host}/API/v3`. Plain `http://` is accepted only for loopback hosts (the simulators),
//! so an API token never travels unencrypted over a network.

use crate::error::Error;
use std::fmt;
use url::Url;
use xmbridge_auth::is_loopback_host;

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
    /// Parses a data-center id a person typed, such as `fra1`, `IAD1` or the legacy `co1`.
    ///
    /// Only Qualtrics' published ids and their legacy aliases are accepted, so a typo (`fra2`) is
    /// an error listing the valid ids; a data center opened after this list was written can be
    /// named by its host instead (`BaseUrl::parse("xyz1.qualtrics.com")`).
    pub fn parse(id: &str) -> Result<DataCenter, Error> {
        let norm = id.trim().to_ascii_lowercase();
        if is_known(&norm) {
            return Ok(canonical(&norm));
        }
        let shown: String = norm.chars().take(40).collect();
        let what = if looks_like_dc(&norm) {
            format!("unknown data center '{shown}'")
        } else {
            format!("'{shown}' is not a data center id")
        };
        Err(Error::InvalidDataCenter(format!(
            "{what}; Qualtrics' data centers are {}. Find yours in the address bar after logging in (acme.fra1.qualtrics.com → fra1) or under Account Settings > Qualtrics IDs; for a data center not listed here give its host instead (xyz1.qualtrics.com)",
            known_list()
        )))
    }

    /// Accepts any id of the right shape (`[a-z]{2,4}` plus at most one digit), for ids that come
    /// from Qualtrics itself (`/whoami`'s `datacenter`, a host name), which may name a data
    /// center newer than this crate.
    pub fn from_server(id: &str) -> Result<DataCenter, Error> {
        let norm = id.trim().to_ascii_lowercase();
        if looks_like_dc(&norm) {
            Ok(canonical(&norm))
        } else {
            let shown: String = norm.chars().take(40).collect();
            Err(Error::InvalidDataCenter(format!(
                "Qualtrics named the data center '{shown}', which is not a data-center id; give the data center explicitly (e.g. fra1)"
            )))
        }
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
        // The id matched `[a-z]{2,4}\d?` when it was made, so this URL is always valid.
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
                Some(canonical(one))
            }
            [_org, dc] if looks_like_dc(dc) => Some(canonical(dc)),
            _ => None,
        }
    }
}

/// The canonical form of an id already checked by `looks_like_dc` or `is_known`.
fn canonical(id: &str) -> DataCenter {
    let c = ALIASES
        .iter()
        .find(|(alias, _)| *alias == id)
        .map(|(_, dc)| (*dc).to_string())
        .unwrap_or_else(|| id.to_string());
    DataCenter(c)
}

/// `yul1 (ca1), iad1 (co1), …` for error messages.
fn known_list() -> String {
    OFFICIAL
        .iter()
        .map(|dc| {
            let aliases: Vec<&str> = ALIASES
                .iter()
                .filter(|(_, c)| c == dc)
                .map(|(a, _)| *a)
                .collect();
            if aliases.is_empty() {
                (*dc).to_string()
            } else {
                format!("{dc} ({})", aliases.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
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
    /// Hosts must be Qualtrics hosts (`*.qualtrics.com`) or loopback; `http://` is refused unless
    /// the host is loopback. An organization id alone goes through [`BaseUrl::from_organization`],
    /// an API gateway in front of Qualtrics through [`BaseUrl::gateway`].
    pub fn parse(input: &str) -> Result<BaseUrl, Error> {
        Self::parse_inner(input, false)
    }

    /// Like [`BaseUrl::parse`] but for any host: an API gateway or proxy that forwards to
    /// Qualtrics (still https only, except loopback). Such a base is never switched to another
    /// host by proxy notices or data-center discovery.
    pub fn gateway(input: &str) -> Result<BaseUrl, Error> {
        Self::parse_inner(input, true)
    }

    /// The vanity host of an organization (brand) id: `acme` → `https://acme.qualtrics.com/API/v3`.
    ///
    /// Qualtrics proxies such hosts to the brand's data center; call
    /// [`crate::Client::discover_data_center`] to learn it and switch to `{dc}.qualtrics.com`.
    pub fn from_organization(org_id: &str) -> Result<BaseUrl, Error> {
        let org = org_id.trim().to_ascii_lowercase();
        let shown: String = org.chars().take(40).collect();
        let valid = !org.is_empty()
            && org.len() <= 63
            && !org.starts_with('-')
            && !org.ends_with('-')
            && org
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(Error::InvalidBaseUrl(format!(
                "'{shown}' is not an organization id: it is one host-name label of letters, digits and '-' (Qualtrics: Account Settings > Qualtrics IDs > Organization ID); to give a host or URL instead use the account URL (acme.ca1.qualtrics.com)"
            )));
        }
        if is_known(&org) {
            return Err(Error::InvalidBaseUrl(format!(
                "'{shown}' is a data center id, not an organization id; give it as the data center instead"
            )));
        }
        if matches!(org.as_str(), "www" | "api" | "login") {
            return Err(Error::InvalidBaseUrl(format!(
                "'{shown}' is not an organization id; copy yours from Account Settings > Qualtrics IDs > Organization ID"
            )));
        }
        let url = Url::parse(&format!("https://{org}.qualtrics.com/API/v3")).map_err(|e| {
            Error::InvalidBaseUrl(format!(
                "'{shown}' does not form a valid host ({e}); check the organization id"
            ))
        })?;
        Ok(BaseUrl(url))
    }

    fn parse_inner(input: &str, any_host: bool) -> Result<BaseUrl, Error> {
        const EXAMPLES: &str = "a data center id (fra1) or your account host (acme.ca1.qualtrics.com, as shown in the browser after logging in)";
        let input = input.trim();
        if input.is_empty() {
            return Err(Error::InvalidBaseUrl(format!(
                "empty account URL; give {EXAMPLES}"
            )));
        }
        let bare = !input.contains("://");
        if bare && !input.contains('.') && !input.contains(':') && !input.contains('/') {
            // A lone label: a data-center id (or a typo of one, or an organization id).
            let shown: String = input.chars().take(40).collect();
            let label_like = input.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !label_like {
                return Err(Error::InvalidBaseUrl(format!(
                    "'{shown}' is not a valid URL, host or data center id; give {EXAMPLES}"
                )));
            }
            return DataCenter::parse(input).map(|dc| dc.base_url()).map_err(|e| {
                let dc_msg = match e {
                    Error::InvalidDataCenter(m) => m,
                    other => other.to_string(),
                };
                Error::InvalidBaseUrl(format!(
                    "{dc_msg}. If '{shown}' is your organization id, give it as the organization instead (it becomes {}.qualtrics.com)",
                    shown.to_ascii_lowercase()
                ))
            });
        }
        let with_scheme = if bare {
            format!("https://{input}")
        } else {
            input.to_string()
        };
        let url = Url::parse(&with_scheme).map_err(|e| {
            Error::InvalidBaseUrl(format!(
                "'{input}' is not a valid URL ({e}); give {EXAMPLES}"
            ))
        })?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                Error::InvalidBaseUrl(format!("'{input}' has no host name; give {EXAMPLES}"))
            })?
            .to_ascii_lowercase();
        // The rule every client shares: https (plain http for loopback only), a valid host
        // name, no credentials in the URL.
        xmbridge_auth::check_credential_url("URL", &url)
            .map_err(|e| Error::InvalidBaseUrl(e.to_string()))?;
        if !any_host && !is_loopback_host(&host) {
            if matches!(host.as_str(), "qualtrics.com" | "www.qualtrics.com") {
                return Err(Error::InvalidBaseUrl(format!(
                    "{host} is Qualtrics' public web site, not an account; give {EXAMPLES}"
                )));
            }
            if !host.ends_with(".qualtrics.com") {
                return Err(Error::InvalidBaseUrl(format!(
                    "{host} is not a Qualtrics host (those end in .qualtrics.com); give {EXAMPLES}. An API gateway in front of Qualtrics must be configured as a gateway explicitly"
                )));
            }
        }
        let mut url = url;
        url.set_path("/API/v3");
        url.set_query(None);
        url.set_fragment(None);
        Ok(BaseUrl(url))
    }

    /// Whether the host is Qualtrics' own (`*.qualtrics.com`), so that proxy notices and
    /// data-center discovery may move calls to another Qualtrics host.
    pub fn is_qualtrics_host(&self) -> bool {
        self.host().ends_with(".qualtrics.com")
    }

    /// A Qualtrics host that names no data center (`acme.qualtrics.com`), which Qualtrics proxies.
    pub fn is_vanity(&self) -> bool {
        self.is_qualtrics_host() && self.data_center().is_none()
    }

    /// The full base, e.g. `https://fra1.qualtrics.com/API/v3`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The base as a [`Url`].
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

    /// Whether the host is loopback (a simulator on this machine).
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
        assert_eq!(
            DataCenter::from_server("zz9").unwrap().id(),
            "zz9",
            "new data centers named by Qualtrics are accepted"
        );
        assert_eq!(DataCenter::from_server("CO1").unwrap().id(), "iad1");
        assert!(DataCenter::from_server("not a dc").is_err());
        assert_eq!(
            DataCenter::of_host("acme.zz9.qualtrics.com").unwrap().id(),
            "zz9"
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
        assert!(BaseUrl::parse("https://localhost:9").is_ok());
    }

    /// Every refusal names the problem and the fix.
    #[test]
    fn bad_input_errors_name_problem_and_fix() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["empty", "fra1", "acme.ca1.qualtrics.com"]),
            (
                "fra2",
                &[
                    "unknown data center 'fra2'",
                    "fra1",
                    "iad1 (co1)",
                    "xyz1.qualtrics.com",
                ],
            ),
            (
                "mycompany",
                &[
                    "not a data center id",
                    "organization",
                    "mycompany.qualtrics.com",
                ],
            ),
            (
                "not a dc",
                &["not a valid URL, host or data center id", "fra1"],
            ),
            ("https://", &["acme.ca1.qualtrics.com"]),
            (
                "http://acme.ca1.qualtrics.com",
                &[
                    "plain http://",
                    "unencrypted",
                    "use https://acme.ca1.qualtrics.com",
                    "loopback",
                ],
            ),
            ("http://10.0.0.5:4000", &["plain http://", "use https://"]),
            (
                "ftp://acme.ca1.qualtrics.com",
                &["unsupported scheme 'ftp'", "use https://"],
            ),
            ("https://u:p@acme.qualtrics.com", &["credentials", "remove"]),
            (
                "https://example.com/API/v3",
                &[
                    "example.com is not a Qualtrics host",
                    ".qualtrics.com",
                    "gateway",
                ],
            ),
            (
                "acme.ca1.qualtrics.com.evil.example",
                &["not a Qualtrics host"],
            ),
            (
                "www.qualtrics.com",
                &["public web site", "acme.ca1.qualtrics.com"],
            ),
        ];
        for (input, wants) in cases {
            let err = BaseUrl::parse(input).unwrap_err();
            assert!(matches!(err, Error::InvalidBaseUrl(_)), "{input}: {err:?}");
            let msg = err.to_string();
            for want in *wants {
                assert!(msg.contains(want), "{input}: {msg:?} lacks {want:?}");
            }
        }
        let err = DataCenter::parse("eu9").unwrap_err().to_string();
        assert!(
            err.contains("unknown data center 'eu9'") && err.contains("fra1 (eu, eu2)"),
            "{err}"
        );
        let err = DataCenter::parse("nowhere-1").unwrap_err().to_string();
        assert!(err.contains("not a data center id"), "{err}");
        // A gateway may be any https host, but still not plain http over the network.
        assert_eq!(
            BaseUrl::gateway("https://gw.example.com/qualtrics")
                .unwrap()
                .as_str(),
            "https://gw.example.com/API/v3"
        );
        assert!(
            !BaseUrl::gateway("https://gw.example.com")
                .unwrap()
                .is_qualtrics_host()
        );
        assert!(BaseUrl::gateway("http://gw.example.com").is_err());
    }

    #[test]
    fn organization_ids() {
        let b = BaseUrl::from_organization(" Acme ").unwrap();
        assert_eq!(b.as_str(), "https://acme.qualtrics.com/API/v3");
        assert!(b.is_vanity() && b.is_qualtrics_host() && b.data_center().is_none());
        assert_eq!(
            BaseUrl::from_organization("acme-corp2").unwrap().host(),
            "acme-corp2.qualtrics.com"
        );
        for (bad, want) in [
            ("", "not an organization id"),
            ("acme.ca1", "not an organization id"),
            ("-acme", "not an organization id"),
            ("ac me", "not an organization id"),
            ("fra1", "is a data center id"),
            ("co1", "is a data center id"),
            ("www", "Organization ID"),
        ] {
            let err = BaseUrl::from_organization(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
        assert!(
            !BaseUrl::parse("acme.ca1.qualtrics.com")
                .unwrap()
                .is_vanity()
        );
        assert!(!BaseUrl::parse("http://127.0.0.1:1").unwrap().is_vanity());
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
