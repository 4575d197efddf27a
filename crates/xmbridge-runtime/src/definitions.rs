//! Saving a workflow definition where `workflow add` keeps them (`$XMBRIDGE_HOME/workflows/`):
//! exactly one workflow per added file, no clash with a workflow another file defines, an
//! existing one replaced only when asked, and the file written atomically.

use std::path::PathBuf;

use xmbridge_actions::Registry;
use xmbridge_vault::Home;
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
