//! Data centers and host names.
//!
//! The simulator listens on loopback, but clients may address it with real Qualtrics host names
//! (through a DNS override such as reqwest's `resolve`) or with `*.localhost` names. The `Host`
//! header tells which data center the caller meant; the brand lives in one of them.

/// Official data centers and their legacy aliases (docs/design/qualtrics-api.md §1).
const ALIASES: &[(&str, &str)] = &[
    ("co1", "iad1"),
    ("az1", "sjc1"),
    ("eu", "fra1"),
    ("eu2", "fra1"),
    ("au1", "syd1"),
    ("ca1", "yul1"),
];

const OFFICIAL: &[&str] = &[
    "yul1", "iad1", "sjc1", "fra1", "lhr1", "syd1", "sin1", "hnd1", "gov1",
];

/// Maps a legacy alias to its current data center id (`co1` → `iad1`); other ids unchanged.
pub fn canonical_dc(dc: &str) -> String {
    let dc = dc.to_ascii_lowercase();
    ALIASES
        .iter()
        .find(|(a, _)| *a == dc)
        .map(|(_, c)| c.to_string())
        .unwrap_or(dc)
}

/// `[a-z]{2,4}\d?`, the shape the contract tells the simulator to accept.
pub fn looks_like_dc(label: &str) -> bool {
    let (letters, digits): (Vec<char>, Vec<char>) = {
        let l: Vec<char> = label.chars().collect();
        let split = l.iter().position(|c| c.is_ascii_digit()).unwrap_or(l.len());
        (l[..split].to_vec(), l[split..].to_vec())
    };
    (2..=4).contains(&letters.len())
        && letters.iter().all(|c| c.is_ascii_lowercase())
        && digits.len() <= 1
}

fn is_known_dc(label: &str) -> bool {
    OFFICIAL.contains(&label) || ALIASES.iter().any(|(a, _)| *a == label)
}

/// The data center named by a `Host` header, if it names one.
///
/// `fra1.qualtrics.com`, `acme.fra1.qualtrics.com`, `fra1.localhost` → `Some("fra1")`;
/// `acme.qualtrics.com` (vanity host), `127.0.0.1:4000`, `localhost` → `None` (the brand's own).
pub fn dc_of_host(host: &str) -> Option<String> {
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let labels: Vec<&str> = if let Some(rest) = host.strip_suffix(".qualtrics.com") {
        rest.split('.').collect()
    } else if let Some(rest) = host.strip_suffix(".localhost") {
        rest.split('.').collect()
    } else {
        return None;
    };
    match labels.as_slice() {
        [one]
            if is_known_dc(one)
                || (looks_like_dc(one) && one.ends_with(|c: char| c.is_ascii_digit())) =>
        {
            Some(canonical_dc(one))
        }
        [_org, dc] if looks_like_dc(dc) => Some(canonical_dc(dc)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(dc_of_host("fra1.qualtrics.com"), Some("fra1".into()));
        assert_eq!(
            dc_of_host("acme.ca1.qualtrics.com:443"),
            Some("yul1".into())
        );
        assert_eq!(dc_of_host("co1.qualtrics.com"), Some("iad1".into()));
        assert_eq!(dc_of_host("acme.qualtrics.com"), None);
        assert_eq!(dc_of_host("127.0.0.1:4000"), None);
        assert_eq!(dc_of_host("iad1.localhost:9"), Some("iad1".into()));
        assert_eq!(dc_of_host("eu.qualtrics.com"), Some("fra1".into()));
    }
}
