//! Shapes recorded from the real Qualtrics API, which the simulator is held to.
//!
//! The source is a survey definition recorded from a real brand and published with the
//! ropensci/qualtRics R package's test fixtures (`fetch_description.yml`); only key names and
//! JSON types are kept here, no values.

use serde_json::Value;

/// The JSON type of a recorded value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonType {
    /// A string.
    Str,
    /// A number.
    Num,
    /// `null` (the key present; the value not set yet).
    Null,
}

/// Every key of a real definition's `SurveyOptions`, with its JSON type.
pub const SURVEY_OPTIONS: &[(&str, JsonType)] = &[
    ("BackButton", JsonType::Str),
    ("SaveAndContinue", JsonType::Str),
    ("SurveyProtection", JsonType::Str),
    ("BallotBoxStuffingPrevention", JsonType::Str),
    ("NoIndex", JsonType::Str),
    ("SecureResponseFiles", JsonType::Str),
    ("SurveyExpiration", JsonType::Str),
    ("SurveyTermination", JsonType::Str),
    ("Header", JsonType::Str),
    ("Footer", JsonType::Str),
    ("ProgressBarDisplay", JsonType::Str),
    ("PartialData", JsonType::Str),
    ("ValidationMessage", JsonType::Str),
    ("PreviousButton", JsonType::Str),
    ("NextButton", JsonType::Str),
    ("SkinLibrary", JsonType::Str),
    ("SkinType", JsonType::Str),
    ("Skin", JsonType::Str),
    ("NewScoring", JsonType::Num),
    ("SkinQuestionWidth", JsonType::Num),
    ("SurveyLanguage", JsonType::Str),
    ("ActiveResponseSet", JsonType::Str),
    ("SurveyStartDate", JsonType::Null),
    ("SurveyExpirationDate", JsonType::Null),
    ("SurveyCreationDate", JsonType::Str),
];

/// Where `options` (a definition's `SurveyOptions`) differs from the recorded keys and types:
/// one line per missing key or wrong type; empty when it matches.
pub fn survey_options_mismatches(options: &Value) -> Vec<String> {
    SURVEY_OPTIONS
        .iter()
        .filter_map(|(key, kind)| {
            let value = options.get(*key);
            let ok = match (kind, value) {
                (JsonType::Str, Some(v)) => v.is_string(),
                (JsonType::Num, Some(v)) => v.is_number(),
                (JsonType::Null, Some(v)) => v.is_null(),
                (_, None) => false,
            };
            (!ok).then(|| format!("SurveyOptions.{key} should be {kind:?}, is {value:?}"))
        })
        .collect()
}
