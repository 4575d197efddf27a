//! The components' migrations on a PostgreSQL state store.
//!
//! The same rules as on SQLite ([`crate::migrate`]): every applied migration is recorded in
//! `state_migrations`, missing ones are applied in order in one transaction, and a component at
//! a version this build does not know is refused. Processes starting at once are serialized by
//! a transaction-scoped advisory lock ([`LOCK_KEY`]) taken before `state_migrations` is even
//! created (two concurrent `CREATE TABLE IF NOT EXISTS` can fail in PostgreSQL); the ones after
//! the first find nothing left to do.

use tokio_postgres::{Client, GenericClient};

use crate::{Applied, Component, MigrateError, StoreRef, check};

/// The advisory lock key that serializes schema changes and `state copy` on one database
/// (`pg_advisory_xact_lock`); the bytes of "xmbSTATE".
pub const LOCK_KEY: i64 = 0x786d_6253_5441_5445;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS state_migrations (
    component  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    name       TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (component, version)
)";

/// A PostgreSQL error as one line: the server's message and detail, or the client's reason.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_string(),
        },
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

fn failed(store: &str, doing: &str) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    let store = store.to_string();
    let doing = doing.to_string();
    move |source| MigrateError::Postgres {
        store,
        doing,
        source,
    }
}

/// Brings `component`'s tables in the database `client` is connected to up to this build's
/// version; returns the migrations it applied. `store` names the database in messages (no
/// password).
pub async fn migrate(
    client: &mut Client,
    store: &str,
    component: &Component,
) -> Result<Vec<Applied>, MigrateError> {
    let at = StoreRef::Postgres(store.to_string());
    if let Some(found) = current(&*client, component.name)
        .await
        .map_err(failed(store, "reading its versions"))?
        && check(found, &at, component)? == component.latest()
    {
        return Ok(Vec::new());
    }
    let tx = client
        .transaction()
        .await
        .map_err(failed(store, "starting a transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(failed(store, "taking the migration lock"))?;
    tx.batch_execute(TABLE)
        .await
        .map_err(failed(store, "creating state_migrations"))?;
    let found = current(&tx, component.name)
        .await
        .map_err(failed(store, "reading its versions"))?
        .unwrap_or(0);
    let from = check(found, &at, component)?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut applied = Vec::new();
    for m in component.migrations.iter().filter(|m| m.version > from) {
        let doing = format!(
            "applying {} version {} ({})",
            component.name, m.version, m.name
        );
        tx.batch_execute(m.postgres)
            .await
            .map_err(failed(store, &doing))?;
        tx.execute(
            "INSERT INTO state_migrations (component, version, name, applied_at) VALUES ($1, $2, $3, $4)",
            &[&component.name, &i64::from(m.version), &m.name, &now],
        )
        .await
        .map_err(failed(store, &doing))?;
        applied.push(Applied {
            component: component.name.to_string(),
            version: i64::from(m.version),
            name: m.name.to_string(),
            applied_at_ms: now,
        });
    }
    tx.commit().await.map_err(failed(store, "committing"))?;
    Ok(applied)
}

/// Every applied migration of every component, in component and version order (empty for a
/// database that has none yet).
pub async fn applied(client: &Client, store: &str) -> Result<Vec<Applied>, MigrateError> {
    let doing = "reading state_migrations";
    if !has_table(client).await.map_err(failed(store, doing))? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT component, version, name, applied_at FROM state_migrations ORDER BY component, version",
            &[],
        )
        .await
        .map_err(failed(store, doing))?;
    Ok(rows
        .iter()
        .map(|r| Applied {
            component: r.get(0),
            version: r.get(1),
            name: r.get(2),
            applied_at_ms: r.get(3),
        })
        .collect())
}

/// Whether a table of that name is visible on the search path.
pub(crate) async fn table_exists(
    client: &impl GenericClient,
    table: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?;
    Ok(row.get(0))
}

async fn has_table(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    table_exists(client, "state_migrations").await
}

async fn current(
    client: &impl GenericClient,
    component: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    if !has_table(client).await? {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT MAX(version) FROM state_migrations WHERE component = $1",
            &[&component],
        )
        .await?;
    Ok(row.get(0))
}
