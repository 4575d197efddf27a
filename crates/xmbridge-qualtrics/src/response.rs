//! What the keys of a response's `values` mean: the API's metadata fields, as opposed to
//! question cells (`QID…`) and embedded data. The sync and the workflow enrichment both split
//! `values` with this one list (docs/design/qualtrics-api.md §6.4).

/// Metadata keys of a response's `values`, in an export record or from the single-response
/// route: everything else is a question cell (`QID…`) or embedded data.
pub const METADATA_KEYS: &[&str] = &[
    "startDate",
    "endDate",
    "status",
    "ipAddress",
    "progress",
    "duration",
    "finished",
    "recordedDate",
    "_recordId",
    "locationLatitude",
    "locationLongitude",
    "distributionChannel",
    "userLanguage",
    "recipientLastName",
    "recipientFirstName",
    "recipientEmail",
    "externalDataReference",
    // The export's spelling of `externalDataReference` on some brands.
    "externalReference",
    "lastModifiedDate",
    "contactId",
];

/// Whether `key` of a response's `values` is response metadata (not an answer, not embedded
/// data).
pub fn is_metadata_key(key: &str) -> bool {
    // Every metadata key starts with a lowercase letter or `_`; question cells (`QID…`, loop
    // cells `2_QID…`) do not, and are told apart without comparing against the list: a first
    // load asks this for every cell of every response.
    key.as_bytes()
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || *b == b'_')
        && METADATA_KEYS.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metadata_key_passes_the_first_letter_check() {
        for key in METADATA_KEYS {
            assert!(is_metadata_key(key), "{key}");
        }
    }

    #[test]
    fn metadata_keys_are_told_apart_from_answers_and_embedded_data() {
        for key in [
            "recordedDate",
            "externalReference",
            "lastModifiedDate",
            "contactId",
        ] {
            assert!(is_metadata_key(key), "{key}");
        }
        for key in ["QID1", "QID2_TEXT", "customer_tier"] {
            assert!(!is_metadata_key(key), "{key}");
        }
    }
}
