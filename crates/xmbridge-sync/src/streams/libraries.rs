//! Libraries → `library`, `library_message`, `library_block`, `library_question`,
//! `library_survey`. Full stream; none of these tables is soft, so each library's item rows are
//! replaced in one commit. A library the caller may not open (403: another user's library) is
//! left out.

use super::{first_call, forbidden, list};
use crate::engine::{Batches, Ctx, SyncError};
use serde_json::Value as Json;
use xmbridge_destinations::{Commit, Value};

/// The tables this stream writes (its group in `xmbridge_qualtrics::capabilities`).
fn tables() -> &'static [&'static str] {
    xmbridge_qualtrics::capabilities::tables_of_stream("libraries")
}

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> Result<(), SyncError> {
    let client = ctx.client.clone();
    let fix = "needs library access (scope read:libraries for OAuth clients)";
    let Some(libs) = first_call(ctx, tables(), fix, list(&client, &["libraries"], &[])).await?
    else {
        return Ok(());
    };
    ctx.progress
        .stream_started("libraries", Some(libs.len() as u64));
    for l in &libs {
        let Some(lid) = l.get("libraryId").and_then(Json::as_str) else {
            continue;
        };
        let mut b = Batches::default();
        let mut r = ctx.specs.row("library");
        r.text("id", lid).put("name", l.get("libraryName"));
        b.push("library", r.build());
        let mut readable = true;
        for (table, seg, id_col, id_key, name_col, name_key) in [
            (
                "library_block",
                "blocks",
                "library_block_id",
                "libraryBlockId",
                "block_name",
                "blockName",
            ),
            (
                "library_question",
                "questions",
                "library_question_id",
                "libraryQuestionId",
                "question_name",
                "questionName",
            ),
            (
                "library_survey",
                "surveys",
                "library_survey_id",
                "librarySurveyId",
                "survey_name",
                "surveyName",
            ),
            (
                "library_message",
                "messages",
                "id",
                "id",
                "description",
                "description",
            ),
        ] {
            let items = match list(&client, &["libraries", lid, seg], &[]).await {
                Ok(items) => items,
                Err(e) if forbidden(&e) => {
                    tracing::info!(
                        library = lid,
                        "library not readable by these credentials; left out"
                    );
                    readable = false;
                    break;
                }
                Err(e) => return Err(SyncError::api(table, None, e)),
            };
            b.delete_where(table, "library_id", vec![Value::Text(lid.into())]);
            for it in &items {
                let mut r = ctx.specs.row(table);
                r.put(id_col, it.get(id_key))
                    .text("library_id", lid)
                    .put(name_col, it.get(name_key));
                if table == "library_message" {
                    r.put("category", it.get("category"));
                } else {
                    // folder_name is part of the key: an item outside folders gets "".
                    let folder = it
                        .get("folderName")
                        .and_then(Json::as_str)
                        .unwrap_or_default();
                    r.text("folder_name", folder);
                }
                b.push(table, r.build());
            }
        }
        if !readable {
            continue;
        }
        let commit = Commit {
            batches: b.into_vec(),
            ..Default::default()
        };
        ctx.commit(commit, "library", None).await?;
        ctx.progress.advanced("libraries", 1);
    }
    ctx.progress.stream_finished("libraries");
    Ok(())
}
