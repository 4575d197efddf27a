//! Saving a workflow definition where `workflow add` keeps them (`$XMBRIDGE_HOME/workflows/`):
//! the text prepared from a template or a file (its name and a default owner filled in),
//! exactly one workflow per added file, no clash with a workflow another file defines, an
//! existing one replaced only when asked, and the file written atomically.

use std::collections::BTreeMap;
use std::path::PathBuf;

use xmbridge_actions::Registry;
use xmbridge_vault::{Home, Vault};
use xmbridge_workflows::catalog::{self, Sources};
use xmbridge_workflows::definition::{FileKind, Workflow, parse_file};

use crate::{Result, RuntimeError};

/// Where the definition `workflow add` saves comes from.
#[derive(Clone, Debug)]
pub enum DefinitionSource {
    /// A built-in template and its parameter values by name.
    Template {
        /// The template's name.
        name: String,
        /// Its parameters as given, `NAME=VALUE` each.
        set: Vec<String>,
    },
    /// A definition file.
    File(PathBuf),
}

/// A definition's text ready to parse, and how messages name it.
#[derive(Clone, Debug)]
pub struct DefinitionText {
    /// `template NAME` or the file's path.
    pub shown: String,
    /// The TOML text.
    pub text: String,
}

/// The text of the definition `source`, its workflow named `name` when given and owned by
/// `owner` unless it names an owner itself. A file's text is kept as written (comments
/// included) when nothing changes.
pub fn definition_text(
    source: DefinitionSource,
    name: Option<&str>,
    owner: Option<&str>,
) -> Result<DefinitionText> {
    match source {
        DefinitionSource::Template {
            name: template,
            set,
        } => {
            let found = catalog::find_template(&template)
                .map_err(|e| RuntimeError::usage(e.to_string()))?;
            let mut values = BTreeMap::new();
            for kv in &set {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| RuntimeError::usage(format!("--set {kv}: write NAME=VALUE")))?;
                values.insert(k.trim().to_string(), v.to_string());
            }
            if let Some(n) = name {
                values.insert("name".into(), n.to_string());
            }
            if !values.contains_key("owner")
                && let Some(u) = owner
            {
                values.insert("owner".into(), u.to_string());
            }
            let text = found
                .instantiate(&values)
                .map_err(|e| RuntimeError::usage(e.to_string()))?;
            Ok(DefinitionText {
                shown: format!("template {template}"),
                text,
            })
        }
        DefinitionSource::File(path) => {
            let text = std::fs::read_to_string(&path).map_err(|source| RuntimeError::Input {
                context: format!("cannot read {}", path.display()),
                source,
            })?;
            let shown = path.display().to_string();
            let text = adjust_file(&shown, &text, name, owner)?;
            Ok(DefinitionText { shown, text })
        }
    }
}

/// Applies `name` and a default owner to a file's single workflow; the text as written when
/// nothing changes.
fn adjust_file(shown: &str, text: &str, name: Option<&str>, owner: Option<&str>) -> Result<String> {
    let mut table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        // parse_one_workflow reports the syntax error with the file name.
        Err(_) => return Ok(text.to_string()),
    };
    let Some(toml::Value::Array(list)) = table.get_mut("workflow") else {
        return Ok(text.to_string());
    };
    let mut changed = false;
    if list.len() == 1
        && let Some(toml::Value::Table(w)) = list.get_mut(0)
    {
        if let Some(n) = name
            && w.get("name").and_then(toml::Value::as_str) != Some(n)
        {
            w.insert("name".into(), toml::Value::String(n.to_string()));
            changed = true;
        }
        if !w.contains_key("owner")
            && let Some(o) = owner
        {
            w.insert("owner".into(), toml::Value::String(o.to_string()));
            changed = true;
        }
    } else if name.is_some() {
        return Err(RuntimeError::usage(format!(
            "{shown}: --name needs a file with exactly one [[workflow]]"
        )));
    }
    if !changed {
        return Ok(text.to_string());
    }
    toml::to_string(&table).map_err(|source| RuntimeError::Toml {
        message: "cannot write the workflow back as TOML".into(),
        source,
    })
}

/// The one workflow of the definition `text` (`shown` names it in messages).
pub fn parse_one_workflow(shown: &str, text: &str, registry: &Registry) -> Result<Workflow> {
    let mut workflows = parse_file(shown, text, FileKind::WorkflowFile, registry)
        .map_err(|e| RuntimeError::usage(e.to_string()))?;
    if workflows.len() != 1 {
        return Err(RuntimeError::usage(format!(
            "{shown}: holds {} workflows; `workflow add` takes exactly one (put several in ./workflows/ instead)",
            workflows.len()
        )));
    }
    Ok(workflows.remove(0))
}

/// Where `workflow add` saves a workflow.
#[derive(Clone, Debug)]
pub struct SaveTarget {
    /// The file it is written to.
    pub path: PathBuf,
    /// Whether it replaces a workflow saved there before (an edit).
    pub replacing: bool,
}

/// Where `workflow` is saved, refusing a name another file defines, and an existing one
/// unless `replace`.
pub fn save_target(
    home: &Home,
    sources: &Sources,
    registry: &Registry,
    workflow: &Workflow,
    replace: bool,
) -> Result<SaveTarget> {
    let name = &workflow.name;
    let path = home.root().join("workflows").join(format!("{name}.toml"));
    let catalog =
        catalog::load(sources, registry).map_err(|e| RuntimeError::usage(e.to_string()))?;
    let replacing = match catalog.get(name) {
        None => false,
        Some(existing) => {
            if existing.file.canonicalize().ok() != path.canonicalize().ok() {
                return Err(RuntimeError::usage(format!(
                    "workflow \"{name}\" is defined in {}; edit that file, or choose another --name",
                    existing.file.display()
                )));
            }
            if !replace {
                return Err(RuntimeError::usage(format!(
                    "workflow \"{name}\" already exists ({}); adding it again is an edit: pass --replace",
                    path.display()
                )));
            }
            true
        }
    };
    Ok(SaveTarget { path, replacing })
}

/// Writes `text` to `target` through a temporary file beside it, so a reader never sees half
/// a definition.
pub fn write_definition(target: &SaveTarget, workflow: &Workflow, text: &str) -> Result<()> {
    let io = |context: String| move |source| RuntimeError::Io { context, source };
    let dir = target
        .path
        .parent()
        .ok_or_else(|| RuntimeError::usage(format!("{} has no folder", target.path.display())))?;
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let tmp = dir.join(format!(".{}.toml.tmp", workflow.name));
    std::fs::write(&tmp, text).map_err(io(format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, &target.path)
        .map_err(io(format!("cannot write {}", target.path.display())))?;
    Ok(())
}

/// Removes the file `workflow add` saved workflow `name` in (refusing a workflow another file
/// defines) and returns its path. A broken file elsewhere does not block the removal when the
/// saved file exists.
pub fn remove_definition(
    home: &Home,
    sources: &Sources,
    registry: &Registry,
    name: &str,
) -> Result<PathBuf> {
    let path = home.root().join("workflows").join(format!("{name}.toml"));
    match catalog::load(sources, registry) {
        Ok(catalog) => {
            let names = catalog.names();
            let entry = catalog
                .get(name)
                .ok_or_else(|| crate::control::no_such_workflow(name, &names))?;
            if entry.file.canonicalize().ok() != path.canonicalize().ok() {
                return Err(RuntimeError::usage(format!(
                    "workflow \"{name}\" is defined in {}, not saved by `workflow add`; delete it from that file",
                    entry.file.display()
                )));
            }
        }
        Err(_) if path.is_file() => {}
        Err(e) => return Err(RuntimeError::usage(e.to_string())),
    }
    std::fs::remove_file(&path).map_err(|source| RuntimeError::Io {
        context: format!("cannot remove {}", path.display()),
        source,
    })?;
    Ok(path)
}

/// A workflow's owner before and after [`transfer_definition`], and its file.
#[derive(Clone, Debug)]
pub struct Transferred {
    /// The file rewritten.
    pub path: PathBuf,
    /// The owner before.
    pub from: String,
    /// The owner now.
    pub to: String,
}

/// Gives workflow `name`, saved by `workflow add`, to `new_owner`: its file's `owner` is
/// rewritten (atomically) and the result checked like any definition. Who may do it is the
/// caller's rule (its owner or an admin); a workflow defined in another file is refused (edit
/// that file).
pub fn transfer_definition(
    home: &Home,
    sources: &Sources,
    registry: &Registry,
    name: &str,
    new_owner: &str,
) -> Result<Transferred> {
    let path = home.root().join("workflows").join(format!("{name}.toml"));
    let catalog =
        catalog::load(sources, registry).map_err(|e| RuntimeError::usage(e.to_string()))?;
    let names = catalog.names();
    let entry = catalog
        .get(name)
        .ok_or_else(|| crate::control::no_such_workflow(name, &names))?;
    if entry.file.canonicalize().ok() != path.canonicalize().ok() {
        return Err(RuntimeError::usage(format!(
            "workflow \"{name}\" is defined in {}, not saved by `workflow add`; change its owner in that file",
            entry.file.display()
        )));
    }
    let from = entry.workflow.owner.clone();
    let text = std::fs::read_to_string(&path).map_err(|source| RuntimeError::Input {
        context: format!("cannot read {}", path.display()),
        source,
    })?;
    let shown = path.display().to_string();
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| RuntimeError::usage(format!("{shown}: {e}")))?;
    match table.get_mut("workflow") {
        Some(toml::Value::Array(list)) if list.len() == 1 => {
            if let Some(toml::Value::Table(w)) = list.get_mut(0) {
                w.insert("owner".into(), toml::Value::String(new_owner.to_string()));
            }
        }
        _ => {
            return Err(RuntimeError::usage(format!(
                "{shown}: expected exactly one [[workflow]]"
            )));
        }
    }
    let new_text = toml::to_string(&table).map_err(|source| RuntimeError::Toml {
        message: "cannot write the workflow back as TOML".into(),
        source,
    })?;
    let w = parse_one_workflow(&shown, &new_text, registry)?;
    let target = SaveTarget {
        path: path.clone(),
        replacing: true,
    };
    write_definition(&target, &w, &new_text)?;
    Ok(Transferred {
        path,
        from,
        to: w.owner,
    })
}

/// Deletes the hook secret of the removed workflow `name` (sealed, and the file `workflow run`
/// wrote for a ServiceNow rule), so its endpoint stops accepting calls even if the name comes
/// back. Whether there was one.
pub fn forget_hook(home: &Home, vault: &Vault, name: &str) -> Result<bool> {
    if !xmbridge_workflows::hooks::remove_secret(vault, name)? {
        return Ok(false);
    }
    let _ = std::fs::remove_file(home.root().join("hooks").join(format!("{name}.secret")));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjust_keeps_text_unless_it_changes() {
        let text = "# comment\n[[workflow]]\nname = \"a\"\nowner = \"o\"\n";
        assert_eq!(adjust_file("f", text, None, Some("me")).unwrap(), text);
        let out = adjust_file("f", "[[workflow]]\nname = \"a\"\n", Some("b"), Some("me")).unwrap();
        let t: toml::Table = toml::from_str(&out).unwrap();
        let w = &t["workflow"][0];
        assert_eq!(w["name"].as_str(), Some("b"));
        assert_eq!(w["owner"].as_str(), Some("me"));
    }
}
