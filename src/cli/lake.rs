//! `xmbridge lake optimize|vacuum PATH`: upkeep of the Delta Lake tables a `delta:PATH`
//! destination holds. The work itself is `xmbridge_destinations::delta`'s; this is the command
//! line and the report.

use std::time::Duration;

use clap::{Args, Subcommand};
use xmbridge_destinations::delta::{DeltaDestination, DeltaOptions};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  xmbridge lake optimize /var/lib/xmbridge/lake
  xmbridge lake optimize delta:/var/lib/xmbridge/lake --schema qualtrics --target-file-mb 256
  xmbridge lake vacuum /var/lib/xmbridge/lake --older-than 7d --dry-run
  xmbridge lake vacuum /var/lib/xmbridge/lake --older-than 7d
  xmbridge lake optimize s3://acme-lake/xmbridge     # credentials from AWS_* in the environment

PATH is the directory of a delta:PATH destination (with or without `delta:`), or its
s3://BUCKET/PREFIX; the tables are PATH/<schema>/<table>. On S3 the lock is the destination's
writer lease (docs/destinations.md, \"Delta Lake on S3\"). Both commands take the schema directory's lock, as a sync does: while a
sync writes there they stop at once with exit code 75, and a sync started while they run stops
the same way. A commit that a killed sync left half applied is finished first.")]
pub struct LakeArgs {
    #[command(subcommand)]
    pub command: LakeCommand,
}

#[derive(Subcommand, Debug)]
pub enum LakeCommand {
    /// Rewrite each table's small data files into files of about the target size (one commit
    /// per table that changes no data), so readers and merges open fewer files.
    Optimize {
        /// The destination directory or S3 URL (`delta:PATH`, `PATH` or `s3://BUCKET/PREFIX`).
        path: String,
        /// The schema directory under PATH.
        #[arg(long, default_value = "qualtrics")]
        schema: String,
        /// Target size of a data file, in MiB; files under half of it are compacted.
        #[arg(long, default_value_t = xmbridge_destinations::delta::DEFAULT_TARGET_FILE_MB)]
        target_file_mb: u64,
        /// Print one JSON object (`{"tables": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete data files no longer part of a table (replaced by a merge or an optimize, or
    /// written by a run killed before it committed) once they are older than --older-than.
    Vacuum {
        /// The destination directory or S3 URL (`delta:PATH`, `PATH` or `s3://BUCKET/PREFIX`).
        path: String,
        /// Keep files younger than this: readers of table versions from within this time
        /// ("time travel") can still read them. `7d`, `36h`, `90m`, `0s`.
        #[arg(long, value_parser = parse_age)]
        older_than: Duration,
        /// The schema directory under PATH.
        #[arg(long, default_value = "qualtrics")]
        schema: String,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object (`{"tables": [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `7d`, `36h`, `90m`, `30s`: a whole number and a unit.
fn parse_age(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!("invalid age {t:?}: write a whole number and a unit, d, h, m or s (7d, 36h, 90m)")
    };
    let unit = t.chars().last().ok_or_else(bad)?;
    let secs_per = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(bad()),
    };
    let n: u64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

fn dir_of(path: &str) -> &str {
    xmbridge_destinations::delta::path_of_url(path).unwrap_or(path)
}

async fn open(path: &str, schema: &str, target_file_mb: u64) -> anyhow::Result<DeltaDestination> {
    let dir = dir_of(path);
    // The cursor table tells which system-column prefix the syncs used (`--compat`): a commit
    // left half applied is finished into that one.
    let Some(compat) =
        xmbridge_destinations::delta::synced_compat(dir, schema, &Default::default()).await?
    else {
        return Err(crate::cli::usage(format!(
            "{dir} holds no schema directory {schema:?} that xmbridge synced into (no cursor table): give the directory or s3:// URL of a delta: destination (and --schema if the sync used another)"
        )));
    };
    let opts = DeltaOptions {
        target_file_mb,
        ..DeltaOptions::default()
    };
    // A busy schema directory exits 75 and bad settings 2, as for `xmbridge sync` (main.rs).
    Ok(DeltaDestination::open(dir, schema, compat, opts).await?)
}

pub async fn run(args: LakeArgs) -> anyhow::Result<()> {
    match args.command {
        LakeCommand::Optimize {
            path,
            schema,
            target_file_mb,
            json,
        } => {
            if target_file_mb == 0 {
                return Err(crate::cli::usage("--target-file-mb must be above 0"));
            }
            let mut lake = open(&path, &schema, target_file_mb).await?;
            let reports = lake.optimize().await?;
            lake.close().await?;
            if json {
                let tables: Vec<_> = reports
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "table": r.table,
                            "files_before": r.files_before,
                            "files_after": r.files_after,
                            "files_compacted": r.files_compacted,
                            "rows_rewritten": r.rows_rewritten,
                        })
                    })
                    .collect();
                println!("{}", serde_json::json!({ "tables": tables }));
                return Ok(());
            }
            println!(
                "{:<28} {:>12} {:>11} {:>14}",
                "table", "files before", "files after", "rows rewritten"
            );
            for r in &reports {
                println!(
                    "{:<28} {:>12} {:>11} {:>14}",
                    r.table, r.files_before, r.files_after, r.rows_rewritten
                );
            }
            let compacted: usize = reports.iter().map(|r| r.files_compacted).sum();
            if compacted == 0 {
                println!(
                    "no table had two or more files under {} MiB: nothing was rewritten",
                    target_file_mb as f64 / 2.0
                );
            } else {
                println!(
                    "compacted {compacted} small file(s); the old files stay until `xmbridge lake vacuum` removes them"
                );
            }
            Ok(())
        }
        LakeCommand::Vacuum {
            path,
            older_than,
            schema,
            dry_run,
            json,
        } => {
            let mut lake = open(
                &path,
                &schema,
                xmbridge_destinations::delta::DEFAULT_TARGET_FILE_MB,
            )
            .await?;
            let reports = lake.vacuum(older_than, dry_run).await?;
            lake.close().await?;
            if json {
                let tables: Vec<_> = reports
                    .iter()
                    .map(|r| serde_json::json!({ "table": r.table, "files": r.files }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "dry_run": dry_run, "tables": tables })
                );
                return Ok(());
            }
            let verb = if dry_run { "would delete" } else { "deleted" };
            let mut total = 0;
            for r in &reports {
                total += r.files.len();
                println!("{:<28} {verb} {} file(s)", r.table, r.files.len());
                if dry_run {
                    for f in &r.files {
                        println!("  {f}");
                    }
                }
            }
            println!(
                "{verb} {total} file(s) older than {}s that no current table version uses{}",
                older_than.as_secs(),
                if dry_run {
                    " (dry run: nothing was deleted)"
                } else {
                    ""
                }
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("7").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("-1d").is_err());
        assert!(parse_age("1w").is_err());
    }
}
