//! Saving a workflow definition where `workflow add` keeps them (`$XMBRIDGE_HOME/workflows/`):
//! exactly one workflow per added file, no clash with a workflow another file defines, an
//! existing one replaced only when asked, and the file written atomically.

use std::path::PathBuf;

use xmbridge_actions::Registry;
use xmbridge_vault::{Home, Vault};
use xmbridge_workflows::catalog::{self, Sources};
use xmbridge_workflows::definition::{FileKind, Workflow, parse_file};

use crate::{Result, RuntimeError};

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
