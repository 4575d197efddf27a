//! (stub)
use crate::engine::{Ctx, SyncError};
pub(crate) async fn run(
    _ctx: &mut Ctx<'_>,
    _s: &[xmbridge_qualtrics::SurveySummary],
) -> Result<(), SyncError> {
    Ok(())
}
