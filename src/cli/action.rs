//! `xmbridge action list|NAME`: every action as a plain command, JSON out.
//!
//! Turns `--input k=v` / `--inputs-json` into the action's JSON inputs, runs the action through
//! `xmbridge_runtime::action` (a Qualtrics action on a stored connection, opened as `xmbridge
//! sync` opens it; a Salesforce or ServiceNow action with a linked account, as a workflow step
//! runs it) and prints its result. The actions themselves (calls, idempotency, error classes)
//! live in `xmbridge-actions`.

use std::sync::Arc;

use super::usage;
use anyhow::anyhow;
use clap::Args;
use serde_json::{Map, Value, json};
use xmbridge_actions::{ActionRequest, Inputs, Registry, System};
use xmbridge_runtime::action::{
    ActionRunError, choose_qualtrics_connection, run_account_action, run_qualtrics_action,
};
use xmbridge_workflows::store::WorkflowStore;

#[derive(Args, Debug)]
pub struct ActionArgs {
    /// `list`, or the action to run (see the list below).
    pub name: String,
    /// With `list`: print the actions as JSON (name, system, title, category, inputs).
    #[arg(long)]
    pub json: bool,
    /// The Qualtrics connection a Qualtrics action uses (default: the only one stored).
    #[arg(long)]
    pub connection: Option<String>,
    /// The linked account a Salesforce or ServiceNow action uses (default: the acting user's
    /// only account of that system); the user must own it or have been granted it.
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    #[command(flatten)]
    pub user: super::account::AsUser,
    /// An input as KEY=VALUE (repeatable). Dotted keys build objects:
    /// `embeddedData.tier=gold` → {"embeddedData":{"tier":"gold"}}.
    #[arg(long = "input", value_name = "KEY=VALUE")]
    pub inputs: Vec<String>,
    /// All inputs as one JSON object, or `@FILE` to read it from a file (keeps secrets such as
    /// `shared_key` off the command line); `--input` values are merged over it.
    #[arg(long, value_name = "JSON|@FILE")]
    pub inputs_json: Option<String>,
    /// The XM Directory (POOL_…) used when `directory_id` is not given (default: the
    /// connection's directory).
    #[arg(long, value_name = "POOL_ID")]
    pub directory: Option<String>,
    /// A delivery key: a retry with the same key finds what the first run created instead of
    /// creating it again (see docs/actions.md).
    #[arg(long, value_name = "KEY")]
    pub delivery_key: Option<String>,
}

/// The `--help` text after the options: the input rule, every action with one line, examples.
pub fn help_text() -> String {
    let reg = Registry::builtin();
    let mut out = String::from(
        "Input values: `--input k=v` values are text. A value that starts with { or [ and is valid \
JSON is taken as that object or list (for object inputs such as embeddedData). Inputs that \
expect a number or true/false accept their text (limit=50, unsubscribed=true). Dotted keys \
build objects (embeddedData.tier=gold). `--inputs-json` gives typed JSON; `--input` is merged \
over it (`--inputs-json @FILE` reads it from a file: use that for secrets such as shared_key). Unknown or missing inputs exit with code 2.\n\nActions:\n",
    );
    let width = reg.iter().map(|a| a.spec().name.len()).max().unwrap_or(0);
    for a in reg.iter() {
        let s = a.spec();
        out.push_str(&format!(
            "  {:<width$}  {} ({})\n",
            s.name, s.title, s.system
        ));
    }
    out.push_str(
        "\nExamples:
  xmbridge action list
  xmbridge action list --json
  xmbridge action look-up-surveys --connection acme
  xmbridge action look-up-contact-by-email --input email=ana@example.com
  xmbridge action create-contact --input email=ana@example.com --input firstName=Ana \\
      --input embeddedData.tier=gold --delivery-key crm-4711
  xmbridge action look-up-contacts-stream --input limit=500 --directory POOL_xxxxxxxxxxxxxxx
  xmbridge action create-distribution --inputs-json '{\"survey_id\":\"SV_…\",\"mailing_list_id\":\"CG_…\",
      \"message_text\":\"Tell us\",\"from_email\":\"noreply@example.com\",\"from_name\":\"Acme\",\"subject\":\"How did we do?\"}'
  # Salesforce and ServiceNow actions run with a linked account the user owns or was granted:
  xmbridge action salesforce.query --account sf-prod --as pat --input soql='SELECT Id FROM Contact LIMIT 5'
  xmbridge action servicenow.create-incident --account snow --input short_description='Printer on fire'

The result is printed as JSON on stdout; errors go to stderr (exit 1; bad inputs exit 2).",
    );
    out
}

/// Puts `value` at the dotted `key` path of `into`, creating objects on the way.
fn set_path(into: &mut Map<String, Value>, key: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("--input {key}: an empty part in the key"));
    }
    let (last, parents) = parts.split_last().ok_or("empty key")?;
    let mut cur = into;
    for (i, p) in parents.iter().enumerate() {
        let slot = cur
            .entry((*p).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        cur = match slot {
            Value::Object(m) => m,
            _ => {
                return Err(format!(
                    "--input {key}: `{}` already holds a value that is not an object",
                    parts[..=i].join(".")
                ));
            }
        };
    }
    if let (Some(Value::Object(old)), Value::Object(new)) = (cur.get_mut(*last), &value) {
        // `--inputs-json '{"embeddedData":{…}}'` plus `--input embeddedData={…}`: merge.
        for (k, v) in new {
            old.insert(k.clone(), v.clone());
        }
        return Ok(());
    }
    cur.insert((*last).to_string(), value);
    Ok(())
}

/// `k=v` → (k, value): text, or JSON when it looks like an object or a list.
fn parse_input(arg: &str) -> Result<(String, Value), String> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| format!("--input {arg}: expected KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("--input {arg}: the key is empty"));
    }
    let t = v.trim_start();
    let value = if t.starts_with('{') || t.starts_with('[') {
        serde_json::from_str::<Value>(v).map_err(|e| {
            format!("--input {k}: the value starts like JSON but is not valid JSON ({e}); quote it in --inputs-json to pass it as text")
        })?
    } else {
        Value::String(v.to_string())
    };
    Ok((k.to_string(), value))
}

/// The inputs of `--inputs-json` and `--input`, merged.
pub fn build_inputs(inputs_json: Option<&str>, pairs: &[String]) -> Result<Inputs, String> {
    let mut inputs = match inputs_json {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("--inputs-json must be a JSON object".into()),
            Err(e) => return Err(format!("--inputs-json is not valid JSON: {e}")),
        },
    };
    for arg in pairs {
        let (k, v) = parse_input(arg)?;
        set_path(&mut inputs, &k, v)?;
    }
    Ok(inputs)
}

fn list(reg: &Registry, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let all: Vec<Value> = reg
            .iter()
            .map(|a| {
                let s = a.spec();
                json!({
                    "name": s.name,
                    "system": s.system.to_string(),
                    "title": s.title,
                    "category": s.category,
                    "stream": s.stream,
                    "writes": s.writes,
                    "inputs": s.inputs.iter().map(|i| json!({
                        "name": i.name, "required": i.required, "help": i.help,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let width = reg.iter().map(|a| a.spec().name.len()).max().unwrap_or(4);
    println!(
        "{:<width$}  {:<10} {:<52} INPUTS (* required)",
        "NAME", "SYSTEM", "TITLE"
    );
    for a in reg.iter() {
        let s = a.spec();
        let inputs: Vec<String> = s
            .inputs
            .iter()
            .map(|i| {
                if i.required {
                    format!("{}*", i.name)
                } else {
                    i.name.to_string()
                }
            })
            .collect();
        println!(
            "{:<width$}  {:<10} {:<52} {}",
            s.name,
            s.system.to_string(),
            s.title,
            inputs.join(", ")
        );
    }
    Ok(())
}

pub async fn run(args: ActionArgs) -> anyhow::Result<()> {
    let reg = Registry::builtin();
    if args.name == "list" {
        return list(&reg, args.json);
    }
    if args.json {
        return Err(usage("--json only goes with `xmbridge action list`"));
    }
    let action = reg
        .find(&args.name)
        .map_err(|_| {
            // Compared without dashes and dots: `lookup-contact` is near `look-up-contact-…`.
            let plain = |s: &str| -> String {
                s.chars()
                    .filter(|c| c.is_alphanumeric())
                    .flat_map(char::to_lowercase)
                    .collect()
            };
            let names: Vec<(String, &str)> = reg
                .iter()
                .map(|a| (plain(a.spec().name), a.spec().name))
                .collect();
            let close: Vec<&str> = xmbridge_workflows::expr::close_matches(
                &plain(&args.name),
                names.iter().map(|(p, _)| p.as_str()),
                3,
            )
            .into_iter()
            .filter_map(|p| names.iter().find(|(q, _)| q == p).map(|(_, n)| *n))
            .collect();
            usage(if close.is_empty() {
                format!("no action '{}'; see `xmbridge action list`", args.name)
            } else {
                format!(
                    "no action '{}'; did you mean {}? (`xmbridge action list` shows them all)",
                    args.name,
                    close
                        .iter()
                        .map(|n| format!("'{n}'"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            })
        })?
        .clone();
    let spec = action.spec();
    let qualtrics = spec.system == System::Qualtrics;
    if qualtrics && args.account.is_some() {
        return Err(usage(format!(
            "{} is a Qualtrics action: it runs on a connection (--connection NAME), not a linked account",
            spec.name
        )));
    }
    if !qualtrics && (args.connection.is_some() || args.directory.is_some()) {
        return Err(usage(format!(
            "{} is a {} action: it runs with a linked account (--account NAME), not a Qualtrics connection",
            spec.name, spec.system
        )));
    }
    let inputs_json = match args.inputs_json.as_deref() {
        Some(arg) if arg.starts_with('@') => {
            let path = &arg[1..];
            Some(
                std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("--inputs-json {arg}: cannot read {path}: {e}")))?,
            )
        }
        other => other.map(str::to_string),
    };
    let inputs = build_inputs(inputs_json.as_deref(), &args.inputs).map_err(usage)?;
    // Input mistakes are found before anything is opened or called.
    xmbridge_actions::check_inputs(spec, &inputs).map_err(|e| usage(e.to_string()))?;

    let (home, vault) = super::connection::open_vault()?;
    let request = ActionRequest {
        inputs,
        delivery_key: args.delivery_key,
    };
    let outcome = if qualtrics {
        let name = choose_qualtrics_connection(&home, &vault, args.connection.as_deref())?;
        run_qualtrics_action(&vault, &name, args.directory, action.as_ref(), request).await
    } else {
        let user = args.user.resolve()?;
        let store = Arc::new(WorkflowStore::open_at(vault.location())?);
        run_account_action(
            &vault,
            store,
            &user,
            args.account.as_deref(),
            action.as_ref(),
            request,
        )
        .await
    };
    match outcome {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        // A RuntimeError stays on top, so `main` still sees a usage error (exit 2).
        Err(ActionRunError::Runtime(e)) => Err(e.into()),
        Err(ActionRunError::Action(e)) => Err(anyhow!(e)),
        Err(e) => Err(anyhow!(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_text_objects_or_dotted_paths() {
        let i = build_inputs(
            Some(r#"{"limit": 5, "embeddedData": {"a": "1"}}"#),
            &[
                "email=ana@example.com".into(),
                "phone=0044123".into(),
                "embeddedData.tier=gold".into(),
                "embeddedData.note=x=y".into(),
                "filter={\"k\": [1, 2]}".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            Value::Object(i),
            json!({"limit": 5, "email": "ana@example.com", "phone": "0044123",
                   "embeddedData": {"a": "1", "tier": "gold", "note": "x=y"},
                   "filter": {"k": [1, 2]}})
        );
        assert!(build_inputs(None, &["noequals".into()]).is_err());
        assert!(build_inputs(None, &["a=1".into(), "a.b=2".into()]).is_err());
        assert!(build_inputs(None, &["a={bad".into()]).is_err());
        assert!(build_inputs(Some("[1]"), &[]).is_err());
    }
}
