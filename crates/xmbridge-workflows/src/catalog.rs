//! The catalog: every workflow this installation knows, loaded from `xmbridge.toml`,
//! `./workflows/*.toml` and `$XMBRIDGE_HOME/workflows/*.toml` (where `workflow add` writes), plus
//! the built-in templates (`--template NAME --set k=v`).
//!
//! It owns finding and reading those files, the rule that names are unique across all of them
//! (an error names both files), and filling template parameters. It must not write files (the CLI
//! does) or keep any state between loads.

use crate::definition::{DefinitionError, FileKind, Location, Problem, Workflow, parse_file};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xmbridge_actions::Registry;

/// One loaded workflow and the file it came from.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The parsed and validated workflow.
    pub workflow: Workflow,
    /// The file it was read from (`xmbridge.toml` or a file in a workflows directory).
    pub file: PathBuf,
}

/// Where workflows are read from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `xmbridge.toml` (from `--config`, else `./xmbridge.toml` when it exists).
    pub config: Option<PathBuf>,
    /// `./workflows`.
    pub project_dir: Option<PathBuf>,
    /// `$XMBRIDGE_HOME/workflows`.
    pub home_dir: Option<PathBuf>,
}

impl Sources {
    /// The usual places relative to the current directory and `home` (XMBRIDGE_HOME).
    pub fn standard(config: Option<PathBuf>, home: Option<&Path>) -> Sources {
        let config = config.or_else(|| {
            let p = PathBuf::from("xmbridge.toml");
            p.is_file().then_some(p)
        });
        Sources {
            config,
            project_dir: Some(PathBuf::from("workflows")),
            home_dir: home.map(|h| h.join("workflows")),
        }
    }
}

/// Every workflow, in load order.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The workflows, `xmbridge.toml` first, then `./workflows`, then `$XMBRIDGE_HOME/workflows`.
    pub entries: Vec<Entry>,
}

impl Catalog {
    /// The workflow named `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.workflow.name == name)
    }

    /// Every workflow's name, in load order (for listings and "did you mean" errors).
    pub fn names(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|e| e.workflow.name.as_str())
            .collect()
    }
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, Problem> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let read = std::fs::read_dir(dir).map_err(|e| Problem {
        location: Location {
            file: dir.display().to_string(),
            ..Location::default()
        },
        message: format!("cannot list the directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one file (errors name it as given).
pub fn load_file(
    path: &Path,
    kind: FileKind,
    registry: &Registry,
) -> Result<Vec<Workflow>, DefinitionError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        DefinitionError::single(
            Location {
                file: shown.clone(),
                ..Location::default()
            },
            format!("cannot read the file: {e}"),
        )
    })?;
    parse_file(&shown, &text, kind, registry)
}

/// Loads every source; all problems of all files are reported together.
pub fn load(sources: &Sources, registry: &Registry) -> Result<Catalog, DefinitionError> {
    let mut files: Vec<(PathBuf, FileKind)> = Vec::new();
    let mut problems = Vec::new();
    if let Some(c) = &sources.config {
        files.push((c.clone(), FileKind::MainConfig));
    }
    for dir in [&sources.project_dir, &sources.home_dir]
        .into_iter()
        .flatten()
    {
        match toml_files(dir) {
            Ok(found) => files.extend(found.into_iter().map(|f| (f, FileKind::WorkflowFile))),
            Err(p) => problems.push(p),
        }
    }
    // The same directory reached twice (XMBRIDGE_HOME inside the project) is read once.
    let mut seen = Vec::new();
    files.retain(|(f, _)| {
        let key = f.canonicalize().unwrap_or_else(|_| f.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    let mut catalog = Catalog::default();
    for (file, kind) in files {
        match load_file(&file, kind, registry) {
            Err(e) => problems.extend(e.problems),
            Ok(ws) => {
                for w in ws {
                    if let Some(first) = catalog.get(&w.name) {
                        problems.push(Problem {
                            location: Location {
                                file: file.display().to_string(),
                                workflow: Some(w.name.clone()),
                                ..Location::default()
                            },
                            message: format!(
                                "is also defined in {}; workflow names must be unique, rename one",
                                first.file.display()
                            ),
                        });
                    } else {
                        catalog.entries.push(Entry {
                            workflow: w,
                            file: file.clone(),
                        });
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(catalog)
    } else {
        Err(DefinitionError { problems })
    }
}

// ---------------------------------------------------------------------------------------------
// Templates

/// A parameter of a template.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// The placeholder's name, as written in `{{name}}` and given with `--set name=…`.
    pub name: &'static str,
    /// One line for `workflow templates` and missing-parameter errors.
    pub help: &'static str,
    /// `None`: must be given with `--set`.
    pub default: Option<&'static str>,
}

/// A built-in workflow template: TOML with `{{param}}` placeholders (no spaces inside the braces;
/// `{{ path }}` with spaces is an expression template and is left alone).
#[derive(Clone, Copy, Debug)]
pub struct Template {
    /// The name given to `--template`.
    pub name: &'static str,
    /// One line saying what the workflow does, for `workflow templates`.
    pub description: &'static str,
    /// The workflow TOML with its placeholders.
    pub text: &'static str,
    /// Every placeholder the text uses.
    pub params: &'static [Param],
}

const fn p(name: &'static str, help: &'static str, default: Option<&'static str>) -> Param {
    Param {
        name,
        help,
        default,
    }
}

const NAME: Param = p("name", "workflow name (default: the template's name)", None);
const OWNER: Param = p(
    "owner",
    "project owner (default: --as / $XMBRIDGE_USER / $USER)",
    None,
);
const DISTRIBUTION: &[Param] = &[
    p("survey_id", "survey to send (SV_…)", None),
    p(
        "library_id",
        "library holding the message (UR_… or GR_…)",
        None,
    ),
    p("message_id", "invitation message (MS_…)", None),
    p(
        "mailing_list_id",
        "mailing list the contact is added to (CG_…)",
        None,
    ),
    p("from_email", "sender address", None),
    p("from_name", "sender name", None),
    p("subject", "email subject", Some("How did we do?")),
];

macro_rules! params {
    ($($p:expr),* ; $rest:expr) => {{
        const HEAD: &[Param] = &[$($p),*];
        const ALL: &[Param] = &concat_params::<{ HEAD.len() + $rest.len() }>(HEAD, $rest);
        ALL
    }};
}

const fn concat_params<const N: usize>(a: &[Param], b: &[Param]) -> [Param; N] {
    let mut out = [NAME; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < b.len() {
        out[i + j] = b[j];
        j += 1;
    }
    out
}

/// The built-in templates: the ServiceNow spoke's three sample flows and two Salesforce
/// extension flows.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "incident-closed-survey",
        description: "ServiceNow incident closed (state 7) → caller upserted into the default directory → survey sent",
        text: include_str!("../templates/incident-closed-survey.toml"),
        params: params!(NAME, OWNER; DISTRIBUTION),
    },
    Template {
        name: "lookup-contact-by-email",
        description: "ServiceNow call → look up the Qualtrics contact by email → customer value written back",
        text: include_str!("../templates/lookup-contact-by-email.toml"),
        params: &[
            NAME,
            OWNER,
            p(
                "table",
                "ServiceNow table of the records",
                Some("customer_contact"),
            ),
            p(
                "value_field",
                "contact embedded data field holding the customer value",
                Some("customer_value"),
            ),
        ],
    },
    Template {
        name: "upsert-contact",
        description: "ServiceNow contact created/updated → Qualtrics upsert-contact → Qualtrics id written back as Reference ID",
        text: include_str!("../templates/upsert-contact.toml"),
        params: &[
            NAME,
            OWNER,
            p(
                "table",
                "ServiceNow table of the contacts",
                Some("customer_contact"),
            ),
            p(
                "reference_field",
                "ServiceNow field receiving the Qualtrics contact id",
                Some("u_qualtrics_id"),
            ),
        ],
    },
    Template {
        name: "response-to-salesforce",
        description: "completed response → Salesforce upsert of Survey_Response__c on Response_Id__c; detractors (NPS ≤ 6) open a ServiceNow incident",
        text: include_str!("../templates/response-to-salesforce.toml"),
        params: &[
            NAME,
            OWNER,
            p(
                "survey_id",
                "survey whose completed responses trigger the workflow (SV_…)",
                None,
            ),
            p(
                "nps_question",
                "question id of the NPS question",
                Some("QID1"),
            ),
            p("salesforce_account", "linked Salesforce account", None),
            p("servicenow_account", "linked ServiceNow account", None),
        ],
    },
    Template {
        name: "salesforce-triggered-survey",
        description: "Salesforce outbound message (e.g. a closed Case) → Qualtrics upsert-contact → survey sent",
        text: include_str!("../templates/salesforce-triggered-survey.toml"),
        params: params!(NAME, OWNER, p("object", "sObject of the outbound message", Some("Case")); DISTRIBUTION),
    },
];

/// The built-in template named `name`, if any.
pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// Why a template could not be filled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateError {
    /// No built-in template has that name.
    #[error("no template named \"{name}\"; templates: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The built-in templates' names, comma-separated.
        known: String,
    },
    /// Parameters without a default were not given.
    #[error("template {template}: missing parameters: {}; give each with --set NAME=VALUE", .missing.join(", "))]
    Missing {
        /// The template's name.
        template: String,
        /// `name (help)` of each missing parameter.
        missing: Vec<String>,
    },
    /// `--set` names a parameter the template does not have.
    #[error("template {template}: unknown parameter \"{param}\"; its parameters: {known}")]
    UnknownParam {
        /// The template's name.
        template: String,
        /// The parameter as given.
        param: String,
        /// The template's parameter names, comma-separated.
        known: String,
    },
    /// A value holds a character that could break out of its TOML string.
    #[error(
        "template {template}: parameter {param}: the value may not contain quotes, backslashes, braces or line breaks"
    )]
    BadValue {
        /// The template's name.
        template: String,
        /// The parameter whose value was refused.
        param: String,
    },
}

impl Template {
    /// The TOML with every `{{param}}` filled from `values`, then from defaults; `name` defaults
    /// to the template's name.
    pub fn instantiate(&self, values: &BTreeMap<String, String>) -> Result<String, TemplateError> {
        let known = || {
            self.params
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (k, v) in values {
            if !self.params.iter().any(|p| p.name == k) {
                return Err(TemplateError::UnknownParam {
                    template: self.name.into(),
                    param: k.clone(),
                    known: known(),
                });
            }
            if v.chars()
                .any(|c| matches!(c, '"' | '\'' | '\\' | '{' | '}' | '\n' | '\r'))
            {
                return Err(TemplateError::BadValue {
                    template: self.name.into(),
                    param: k.clone(),
                });
            }
        }
        let mut missing = Vec::new();
        let mut resolved = BTreeMap::new();
        for p in self.params {
            let v = values
                .get(p.name)
                .cloned()
                .or_else(|| p.default.map(str::to_string))
                .or_else(|| (p.name == "name").then(|| self.name.to_string()));
            match v {
                Some(v) if !v.is_empty() => {
                    resolved.insert(p.name, v);
                }
                _ => missing.push(format!("{} ({})", p.name, p.help)),
            }
        }
        if !missing.is_empty() {
            return Err(TemplateError::Missing {
                template: self.name.into(),
                missing,
            });
        }
        let mut out = self.text.to_string();
        for (k, v) in &resolved {
            out = out.replace(&format!("{{{{{k}}}}}"), v);
        }
        Ok(out)
    }

    /// The `{{param}}` placeholders in the text (to check templates declare what they use).
    pub fn placeholders(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut rest = self.text;
        while let Some(i) = rest.find("{{") {
            rest = &rest[i + 2..];
            if let Some(j) = rest.find("}}") {
                let inner = &rest[..j];
                if !inner.is_empty()
                    && inner
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                    && !out.iter().any(|o| o == inner)
                {
                    out.push(inner.to_string());
                }
            }
        }
        out
    }
}

/// Looks a template up or lists them.
pub fn find_template(name: &str) -> Result<&'static Template, TemplateError> {
    template(name).ok_or_else(|| TemplateError::Unknown {
        name: name.into(),
        known: TEMPLATES
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Trigger;

    fn full_params(t: &Template) -> BTreeMap<String, String> {
        t.params
            .iter()
            .map(|p| {
                let v = match p.name {
                    "name" => "my-flow".to_string(),
                    "survey_id" => "SV_abc123".to_string(),
                    n => p
                        .default
                        .map(str::to_string)
                        .unwrap_or(format!("{n}-value")),
                };
                (p.name.to_string(), v)
            })
            .collect()
    }

    #[test]
    fn every_template_declares_exactly_its_placeholders() {
        for t in TEMPLATES {
            let mut used = t.placeholders();
            used.sort();
            let mut declared: Vec<String> = t.params.iter().map(|p| p.name.to_string()).collect();
            declared.sort();
            assert_eq!(used, declared, "{}", t.name);
        }
    }

    #[test]
    fn every_template_parses_and_validates_with_its_params() {
        let reg = xmbridge_actions::Registry::builtin();
        for t in TEMPLATES {
            let text = t.instantiate(&full_params(t)).unwrap();
            let ws = parse_file(t.name, &text, FileKind::WorkflowFile, &reg)
                .unwrap_or_else(|e| panic!("{}:\n{e}", t.name));
            assert_eq!(ws.len(), 1);
            assert_eq!(ws[0].name, "my-flow");
            assert_eq!(ws[0].owner, "owner-value");
        }
    }

    #[test]
    fn missing_parameters_are_listed() {
        let t = template("response-to-salesforce").unwrap();
        let err = t.instantiate(&BTreeMap::new()).unwrap_err().to_string();
        assert_eq!(
            err,
            "template response-to-salesforce: missing parameters: owner (project owner (default: --as / $XMBRIDGE_USER / $USER)), survey_id (survey whose completed responses trigger the workflow (SV_…)), salesforce_account (linked Salesforce account), servicenow_account (linked ServiceNow account); give each with --set NAME=VALUE"
        );
        let mut v = full_params(t);
        v.insert("colour".into(), "red".into());
        assert!(matches!(
            t.instantiate(&v),
            Err(TemplateError::UnknownParam { .. })
        ));
        let mut v = full_params(t);
        v.insert("survey_id".into(), "SV_1\" or true".into());
        assert!(matches!(
            t.instantiate(&v),
            Err(TemplateError::BadValue { .. })
        ));
    }

    #[test]
    fn filled_template_carries_the_values() {
        let t = template("response-to-salesforce").unwrap();
        let mut v = full_params(t);
        v.insert("nps_question".into(), "QID7".into());
        let text = t.instantiate(&v).unwrap();
        let w = parse_file(
            "t",
            &text,
            FileKind::WorkflowFile,
            &xmbridge_actions::Registry::builtin(),
        )
        .unwrap()
        .remove(0);
        assert_eq!(
            w.trigger,
            Trigger::QualtricsResponse {
                survey_id: "SV_abc123".into()
            }
        );
        assert_eq!(
            w.steps[0].account.as_deref(),
            Some("salesforce_account-value")
        );
        assert_eq!(
            w.steps[1]
                .when
                .as_ref()
                .map(|e| e.source().to_string())
                .as_deref(),
            Some("number(response.values.QID7) <= 6")
        );
        assert!(
            find_template("nope")
                .unwrap_err()
                .to_string()
                .contains("incident-closed-survey")
        );
    }

    #[test]
    fn catalog_rejects_duplicates_naming_both_files() {
        let dir = std::env::temp_dir().join(format!("xmb-cat-{}", std::process::id()));
        let (a, b) = (dir.join("project"), dir.join("home"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let t = template("upsert-contact").unwrap();
        let text = t.instantiate(&full_params(t)).unwrap();
        std::fs::write(a.join("one.toml"), &text).unwrap();
        std::fs::write(b.join("two.toml"), &text).unwrap();
        let sources = Sources {
            config: None,
            project_dir: Some(a.clone()),
            home_dir: Some(b.clone()),
        };
        let err = load(&sources, &xmbridge_actions::Registry::builtin())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: workflow \"my-flow\": is also defined in {}; workflow names must be unique, rename one",
                b.join("two.toml").display(),
                a.join("one.toml").display()
            )
        );
        std::fs::remove_file(b.join("two.toml")).unwrap();
        let cat = load(&sources, &xmbridge_actions::Registry::builtin()).unwrap();
        assert_eq!(cat.names(), vec!["my-flow"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
