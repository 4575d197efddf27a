//! (stub)
use crate::engine::{Ctx, SyncError};
pub(crate) async fn run(_ctx: &mut Ctx<'_>) -> Result<(), SyncError> {
    Ok(())
}
