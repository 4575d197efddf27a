//! Where a Delta destination's schema lives: a local directory, or a prefix in an S3 bucket
//! (`delta:s3://bucket/prefix`). Owns everything the Delta destination keeps beside its tables
//! (the redo file, the fence file, the writer lock) and the reading of data files, so that
//! `delta.rs` is the same for both.
//!
//! Must not: hold credentials anywhere but in the object store client (they come from the
//! environment, `AWS_*`, never from the URL), or reach any endpoint the environment does not
//! name.
//!
//! - Local: small files are written to a temporary file, fsynced and renamed; the lock is an
//!   advisory `flock` on `_xmbridge.lock`, released by the kernel when the process ends.
//! - S3: small files are single PUTs (durable when answered). The lock is a lease object,
//!   `_xmbridge.lock`, created with `If-None-Match: *`, renewed every third of its time with
//!   `If-Match` on its ETag, and deleted at close. A run killed without closing leaves it until
//!   it lapses (`?lease_secs=`, 30 by default); a run whose renewal fails stops committing.
//!   Delta commits themselves go through delta-rs's log store, whose put-if-absent needs
//!   conditional writes: S3 has them since 2024, as have MinIO and most S3-compatible stores.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deltalake::arrow::array::RecordBatch;
use deltalake::logstore::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use deltalake::logstore::object_store::path::Path as ObjPath;
use deltalake::logstore::object_store::{
    self, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::{
    ArrowReaderBuilder, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use deltalake::parquet::file::metadata::PageIndexPolicy;
use deltalake::{DeltaResult, DeltaTableBuilder};
// parquet 59 deprecates its object_store reader in favour of one's own `AsyncFileReader` run on
// a dedicated I/O runtime; it still works, and the writer side (delta-rs) runs on this runtime too.
#[allow(deprecated)]
use deltalake::parquet::arrow::async_reader::ParquetObjectReader;
use deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use futures_util::stream::{BoxStream, StreamExt as _};
use url::Url;

use crate::DestError;

/// The URL schemes of the object stores this build writes (S3 and S3-compatible stores).
pub const OBJECT_STORE_SCHEMES: &[&str] = &["s3", "s3a"];

/// Default lifetime of an object-store lease (`?lease_secs=`).
pub const DEFAULT_LEASE_SECS: u64 = 30;

/// Rows per record batch read back from a file.
const READ_BATCH_ROWS: usize = 8_192;

/// The lock file or lease object that keeps a second writer out.
pub(crate) const LOCK_FILE: &str = "_xmbridge.lock";

/// A schema's location.
pub(crate) enum Place {
    /// The schema directory.
    Local(PathBuf),
    /// The schema's URL (ending in `/`), a store for the bucket it is in, and the settings
    /// given in code (tests) over the environment's.
    Remote {
        url: Url,
        store: Arc<dyn ObjectStore>,
        prefix: ObjPath,
        settings: S3Settings,
    },
}

/// S3 client settings given in code, over the `AWS_*` environment: object_store's AWS keys
/// (`aws_endpoint`, `aws_access_key_id`, …). Empty in production, where the environment says
/// everything; tests name their local S3 server here. `Debug` shows the keys, never a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings(pub Vec<(String, String)>);

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=…")))
            .finish()
    }
}

/// What a table's location holds.
pub(crate) enum Holds {
    Table,
    Nothing,
    /// Something else: the first name found.
    Other(String),
}

fn store_err(what: &str, e: impl std::fmt::Display) -> DestError {
    DestError::Sql {
        context: what.to_string(),
        message: e.to_string(),
    }
}

impl Place {
    /// The schema `schema` under `location` (a directory, or an `s3://bucket/prefix` URL).
    /// Creates nothing: [`Place::create`] does.
    pub(crate) fn open(
        location: &str,
        schema: &str,
        described: &str,
        settings: &S3Settings,
    ) -> Result<Place, DestError> {
        // The messages below never repeat the URL as given: it may hold a secret.
        if let Some((scheme, _)) = location.split_once("://") {
            if !OBJECT_STORE_SCHEMES.contains(&scheme) {
                return Err(DestError::Settings(format!(
                    "the Delta destination names the object store scheme {scheme}://, which this build does not write; it writes local directories (delta:/path/to/lake) and S3 or S3-compatible stores (delta:s3://bucket/prefix); see docs/destinations.md, \"Delta Lake on S3\""
                )));
            }
            let base = Url::parse(location).map_err(|e| {
                DestError::Settings(format!(
                    "the Delta destination's {scheme}:// URL is not a valid URL ({e}); write delta:s3://bucket/prefix"
                ))
            })?;
            if base.query().is_some() || !base.username().is_empty() || base.password().is_some() {
                return Err(DestError::Settings(
                    "the Delta destination's S3 URL carries a user, a password or options; credentials come from the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL): see docs/destinations.md, \"Delta Lake on S3\"".into(),
                ));
            }
            if base.host_str().is_none_or(str::is_empty) {
                return Err(DestError::Settings(format!(
                    "the Delta destination {described:?} names no bucket; write delta:s3://bucket/prefix"
                )));
            }
            register_object_stores();
            let mut url = base;
            let path = format!("{}/{schema}/", url.path().trim_end_matches('/'));
            url.set_path(&path);
            let store = s3_store(&url, &settings.0).map_err(|e| DestError::Connect {
                destination: described.to_string(),
                reason: format!("cannot set up the S3 client: {e}"),
            })?;
            let prefix = ObjPath::from_url_path(url.path()).map_err(|e| {
                DestError::Settings(format!(
                    "the Delta destination {described:?} has a path S3 cannot hold: {e}"
                ))
            })?;
            return Ok(Place::Remote {
                url,
                store,
                prefix,
                settings: settings.clone(),
            });
        }
        let base = std::path::absolute(location).map_err(|e| DestError::Connect {
            destination: described.to_string(),
            reason: format!("cannot resolve the path: {e}"),
        })?;
        Ok(Place::Local(base.join(schema)))
    }

    /// Makes a local schema directory (an object store needs none).
    pub(crate) fn create(&self, described: &str) -> Result<(), DestError> {
        match self {
            Place::Local(root) => std::fs::create_dir_all(root).map_err(|e| DestError::Connect {
                destination: described.to_string(),
                reason: format!(
                    "cannot create the directory {}: {e}; choose a directory this user may write",
                    root.display()
                ),
            }),
            Place::Remote { .. } => Ok(()),
        }
    }

    /// The schema's location as shown to a person.
    pub(crate) fn shown(&self) -> String {
        match self {
            Place::Local(root) => root.display().to_string(),
            Place::Remote { url, .. } => url.as_str().trim_end_matches('/').to_string(),
        }
    }

    /// `name` (a table directory or a file beside the tables) as shown to a person.
    pub(crate) fn shown_of(&self, name: &str) -> String {
        match self {
            Place::Local(root) => root.join(name).display().to_string(),
            Place::Remote { url, .. } => format!("{url}{name}"),
        }
    }

    /// A delta-rs table builder for the table `dir`.
    pub(crate) fn table_builder(&self, dir: &str) -> Result<DeltaTableBuilder, DestError> {
        let url = self.table_url(dir)?;
        let builder =
            DeltaTableBuilder::from_url(url).map_err(|e| store_err(&self.shown_of(dir), e))?;
        Ok(match self {
            Place::Local(_) => builder,
            Place::Remote { settings, .. } => {
                builder.with_storage_options(settings.0.iter().cloned().collect())
            }
        })
    }

    /// The URL of the table `dir`, for delta-rs.
    pub(crate) fn table_url(&self, dir: &str) -> Result<Url, DestError> {
        match self {
            Place::Local(root) => Url::from_directory_path(root.join(dir)).map_err(|()| {
                DestError::Settings(format!(
                    "{} is not an absolute local path",
                    root.join(dir).display()
                ))
            }),
            Place::Remote { url, .. } => url
                .join(&format!("{dir}/"))
                .map_err(|e| DestError::Settings(format!("{url}{dir}: {e}"))),
        }
    }

    fn object(prefix: &ObjPath, name: &str) -> ObjPath {
        name.split('/').fold(prefix.clone(), |p, part| p.join(part))
    }

    /// The bytes of the small file `name`, if it exists.
    pub(crate) async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, DestError> {
        let shown = self.shown_of(name);
        match self {
            Place::Local(root) => match std::fs::read(root.join(name)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(store_err(&shown, e)),
            },
            Place::Remote { store, prefix, .. } => {
                match store.get(&Self::object(prefix, name)).await {
                    Ok(got) => Ok(Some(
                        got.bytes()
                            .await
                            .map_err(|e| store_err(&shown, e))?
                            .to_vec(),
                    )),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(store_err(&shown, e)),
                }
            }
        }
    }

    /// Replaces the small file `name` durably and atomically.
    pub(crate) async fn write(&self, name: &str, bytes: Vec<u8>) -> Result<(), String> {
        match self {
            Place::Local(root) => {
                write_atomically(&root.join(name), &bytes).map_err(|e| e.to_string())
            }
            Place::Remote { store, prefix, .. } => store
                .put(&Self::object(prefix, name), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    /// Removes the small file `name`, if it exists.
    pub(crate) async fn remove(&self, name: &str) -> Result<(), DestError> {
        let shown = self.shown_of(name);
        match self {
            Place::Local(root) => match std::fs::remove_file(root.join(name)) {
                Ok(()) => sync_dir(root).map_err(|e| store_err(&shown, e)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(store_err(&shown, e)),
            },
            Place::Remote { store, prefix, .. } => {
                match store.delete(&Self::object(prefix, name)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(store_err(&shown, e)),
                }
            }
        }
    }

    /// What the table location `dir` holds.
    pub(crate) async fn holds(&self, dir: &str) -> Result<Holds, DestError> {
        let shown = self.shown_of(dir);
        match self {
            Place::Local(root) => {
                let path = root.join(dir);
                if path.join("_delta_log").is_dir() {
                    return Ok(Holds::Table);
                }
                match std::fs::read_dir(&path) {
                    Ok(mut entries) => Ok(match entries.next() {
                        Some(e) => Holds::Other(
                            e.map(|e| e.file_name().to_string_lossy().into_owned())
                                .unwrap_or_default(),
                        ),
                        None => Holds::Nothing,
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Holds::Nothing),
                    Err(e) => Err(store_err(&shown, e)),
                }
            }
            Place::Remote { store, prefix, .. } => {
                let listed = store
                    .list_with_delimiter(Some(&Self::object(prefix, dir)))
                    .await
                    .map_err(|e| store_err(&shown, e))?;
                if listed
                    .common_prefixes
                    .iter()
                    .any(|p| p.filename() == Some("_delta_log"))
                {
                    return Ok(Holds::Table);
                }
                let first = listed
                    .common_prefixes
                    .iter()
                    .chain(listed.objects.iter().map(|o| &o.location))
                    .next();
                Ok(match first {
                    Some(p) => Holds::Other(p.filename().unwrap_or_default().to_string()),
                    None => Holds::Nothing,
                })
            }
        }
    }

    /// Makes the location of a new table (a local directory; nothing on an object store).
    pub(crate) fn prepare(&self, dir: &str) -> std::io::Result<()> {
        match self {
            Place::Local(root) => std::fs::create_dir_all(root.join(dir)),
            Place::Remote { .. } => Ok(()),
        }
    }

    /// The names of the schema's Delta tables, sorted.
    pub(crate) async fn table_dirs(&self) -> Result<Vec<String>, DestError> {
        let shown = self.shown();
        let mut names: Vec<String> = match self {
            Place::Local(root) => std::fs::read_dir(root)
                .map_err(|e| store_err(&shown, e))?
                .filter_map(Result::ok)
                .filter(|e| e.path().join("_delta_log").is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Place::Remote { store, prefix, .. } => {
                let listed = store
                    .list_with_delimiter(Some(prefix))
                    .await
                    .map_err(|e| store_err(&shown, e))?;
                let mut names = Vec::new();
                for dir in &listed.common_prefixes {
                    let Some(name) = dir.filename() else { continue };
                    if matches!(self.holds(name).await?, Holds::Table) {
                        names.push(name.to_string());
                    }
                }
                names
            }
        };
        names.sort();
        Ok(names)
    }

    /// Streams the data file `path` of the table `dir` (only `columns` when given; those the
    /// file lacks are left out), a few thousand rows at a time.
    pub(crate) async fn read_file(
        &self,
        dir: &str,
        path: &str,
        size: u64,
        columns: Option<&[String]>,
        shown: &str,
    ) -> Result<BoxStream<'static, Result<RecordBatch, DestError>>, DestError> {
        self.read_data(dir, path, size, columns, None, shown).await
    }

    /// Streams only the rows in `ranges` (sorted, not overlapping) of the data file `path`,
    /// every column: where the file has an offset index (xmbridge's files do), pages without a
    /// selected row are not read.
    pub(crate) async fn read_rows(
        &self,
        dir: &str,
        path: &str,
        size: u64,
        ranges: &[std::ops::Range<usize>],
        shown: &str,
    ) -> Result<BoxStream<'static, Result<RecordBatch, DestError>>, DestError> {
        self.read_data(dir, path, size, None, Some(ranges), shown)
            .await
    }

    /// `size` is the file's size in bytes as the table's log records it (0: unknown).
    async fn read_data(
        &self,
        dir: &str,
        path: &str,
        size: u64,
        columns: Option<&[String]>,
        ranges: Option<&[std::ops::Range<usize>]>,
        shown: &str,
    ) -> Result<BoxStream<'static, Result<RecordBatch, DestError>>, DestError> {
        let named = format!("{}/{path}", self.shown_of(dir));
        let err = {
            let (shown, named) = (shown.to_string(), named.clone());
            move |e: &dyn std::fmt::Display| {
                store_err(&shown, format!("cannot read data file {named}: {e}"))
            }
        };
        match self {
            // Local files through the synchronous reader: no task hand-off per read.
            Place::Local(root) => {
                let file = std::fs::File::open(root.join(dir).join(path)).map_err(|e| err(&e))?;
                let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(
                    file,
                    reader_options(ranges),
                )
                .map_err(|e| err(&e))?;
                let reader = shaped(builder, columns, ranges)
                    .build()
                    .map_err(|e| err(&e))?;
                Ok(futures_util::stream::iter(reader.map(move |b| b.map_err(|e| err(&e)))).boxed())
            }
            Place::Remote { store, prefix, .. } => {
                let object = Self::object(&Self::object(prefix, dir), path);
                #[allow(deprecated)]
                let reader = ParquetObjectReader::new(Arc::clone(store), object);
                // With the size known, the footer is read by plain byte ranges: some
                // S3-compatible stores do not serve the suffix ranges the reader needs without it.
                #[allow(deprecated)]
                let reader = match size {
                    0 => reader,
                    size => reader.with_file_size(size),
                };
                let builder = ParquetRecordBatchStreamBuilder::new_with_options(
                    reader,
                    reader_options(ranges),
                )
                .await
                .map_err(|e| err(&e))?;
                let stream = shaped(builder, columns, ranges)
                    .build()
                    .map_err(|e| err(&e))?;
                Ok(stream.map(move |b| b.map_err(|e| err(&e))).boxed())
            }
        }
    }

    /// Takes the schema's writer lock; [`DestError::Busy`] when another writer holds it.
    pub(crate) async fn lock(&self, described: &str, lease: Duration) -> Result<Lock, DestError> {
        match self {
            Place::Local(root) => take_file_lock(root, described).map(Lock::File),
            Place::Remote {
                store, prefix, url, ..
            } => Lease::take(
                Arc::clone(store),
                Self::object(prefix, LOCK_FILE),
                format!("{url}{LOCK_FILE}"),
                described,
                lease,
            )
            .await
            .map(Lock::Lease),
        }
    }
}

/// A reader that skips pages by the file's offset index (where the file has one) when only some
/// rows are read.
fn reader_options(ranges: Option<&[std::ops::Range<usize>]>) -> ArrowReaderOptions {
    let policy = match ranges {
        Some(_) => PageIndexPolicy::Optional,
        None => PageIndexPolicy::Skip,
    };
    ArrowReaderOptions::new().with_offset_index_policy(policy)
}

/// `ranges` in order without overlaps: each range is trimmed to start where the one before
/// ended, and dropped if nothing is left. The rows a selection of them reads are then, in order,
/// the positions the ranges list.
pub(crate) fn separate_ranges(ranges: &[std::ops::Range<usize>]) -> Vec<std::ops::Range<usize>> {
    let mut end = 0;
    ranges
        .iter()
        .filter_map(|r| {
            let start = r.start.max(end);
            (start < r.end).then(|| {
                end = r.end;
                start..r.end
            })
        })
        .collect()
}

/// A reader of only `columns` and `ranges` of rows (when given), a few thousand rows at a time.
fn shaped<T>(
    builder: ArrowReaderBuilder<T>,
    columns: Option<&[String]>,
    ranges: Option<&[std::ops::Range<usize>]>,
) -> ArrowReaderBuilder<T> {
    let builder = match ranges {
        Some(ranges) => {
            let total = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
            // Ranges past the file's end or behind the one before are trimmed: the reader
            // panics on them.
            let ranges = separate_ranges(ranges)
                .into_iter()
                .filter_map(|r| (r.start < total).then(|| r.start..r.end.min(total)));
            let selection = RowSelection::from_consecutive_ranges(ranges, total);
            builder.with_row_selection(selection)
        }
        None => builder,
    };
    let builder = match columns {
        Some(cols) => {
            let mask =
                ProjectionMask::columns(builder.parquet_schema(), cols.iter().map(String::as_str));
            builder.with_projection(mask)
        }
        None => builder,
    };
    builder.with_batch_size(READ_BATCH_ROWS)
}

/// A schema's writer lock, held while the destination is open.
pub(crate) enum Lock {
    File(#[allow(dead_code)] std::fs::File),
    Lease(Lease),
}

impl Lock {
    /// Refuses a commit once the lease was lost (a local lock cannot be).
    pub(crate) fn check(&self, described: &str) -> Result<(), DestError> {
        match self {
            Lock::File(_) => Ok(()),
            Lock::Lease(lease) => lease.check(described),
        }
    }

    /// Gives the lock up (a lease is deleted; a file lock ends with the file).
    pub(crate) async fn release(&mut self) {
        if let Lock::Lease(lease) = self {
            lease.release().await;
        }
    }
}

fn take_file_lock(root: &Path, described: &str) -> Result<std::fs::File, DestError> {
    let path = root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DestError::Connect {
            destination: described.to_string(),
            reason: format!("cannot open the lock file {}: {e}", path.display()),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DestError::Busy {
            destination: described.to_string(),
            holder: format!(
                ", locked by another process through {} (`fuser -v {}` shows which)",
                path.display(),
                path.display()
            ),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(DestError::Connect {
            destination: described.to_string(),
            reason: format!("cannot lock {}: {e}", path.display()),
        }),
    }
}

/// What a lease object holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseBody {
    holder: String,
    /// Milliseconds since the Unix epoch after which another writer may take the lease.
    expires_ms: i64,
}

/// A writer lease on an object store (see the module docs).
pub(crate) struct Lease {
    store: Arc<dyn ObjectStore>,
    object: ObjPath,
    shown: String,
    holder: String,
    lease: Duration,
    etag: Arc<Mutex<Option<String>>>,
    lost: Arc<AtomicBool>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn lease_body(holder: &str, lease: Duration) -> PutPayload {
    let body = LeaseBody {
        holder: holder.to_string(),
        expires_ms: now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)),
    };
    PutPayload::from(serde_json::to_vec(&body).unwrap_or_default())
}

fn put_mode(mode: PutMode) -> PutOptions {
    PutOptions {
        mode,
        ..PutOptions::default()
    }
}

/// Writes the lease afresh (held by `holder` for `lease` from now), only if the object still
/// has the ETag `etag`: a take-over, a renewal and the check before a release are all this.
async fn write_lease_if(
    store: &Arc<dyn ObjectStore>,
    object: &ObjPath,
    holder: &str,
    lease: Duration,
    etag: Option<String>,
) -> object_store::Result<object_store::PutResult> {
    let mode = PutMode::Update(UpdateVersion {
        e_tag: etag,
        version: None,
    });
    store
        .put_opts(object, lease_body(holder, lease), put_mode(mode))
        .await
}

impl Lease {
    async fn take(
        store: Arc<dyn ObjectStore>,
        object: ObjPath,
        shown: String,
        described: &str,
        lease: Duration,
    ) -> Result<Lease, DestError> {
        let holder = format!(
            "{} pid {}",
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "this host".into()),
            std::process::id()
        );
        let connect = |e: &dyn std::fmt::Display| DestError::Connect {
            destination: described.to_string(),
            reason: format!("cannot take the writer lease {shown}: {e}"),
        };
        let created = store
            .put_opts(
                &object,
                lease_body(&holder, lease),
                put_mode(PutMode::Create),
            )
            .await;
        let etag = match created {
            Ok(r) => r.e_tag,
            Err(object_store::Error::AlreadyExists { .. }) => {
                let got = store.get(&object).await.map_err(|e| connect(&e))?;
                let etag = got.meta.e_tag.clone();
                let bytes = got.bytes().await.map_err(|e| connect(&e))?;
                let held: Option<LeaseBody> = serde_json::from_slice(&bytes).ok();
                if let Some(h) = &held
                    && h.expires_ms > now_ms()
                {
                    let until = chrono::DateTime::from_timestamp_millis(h.expires_ms)
                        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_default();
                    return Err(DestError::Busy {
                        destination: described.to_string(),
                        holder: format!(
                            ", leased by {} until {until} through {shown} (a writer renews its lease while it runs; the lease of a run that was killed lapses at that time)",
                            h.holder
                        ),
                    });
                }
                // Lapsed (or unreadable): taken over only if nobody renewed or took it since.
                let taken = write_lease_if(&store, &object, &holder, lease, etag).await;
                match taken {
                    Ok(r) => r.e_tag,
                    Err(object_store::Error::Precondition { .. }) => {
                        return Err(DestError::Busy {
                            destination: described.to_string(),
                            holder: format!(
                                ", whose lapsed lease {shown} another writer took at the same moment"
                            ),
                        });
                    }
                    Err(e) => return Err(connect(&e)),
                }
            }
            Err(e) => return Err(connect(&e)),
        };
        let etag = Arc::new(Mutex::new(etag));
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            Arc::clone(&store),
            object.clone(),
            holder.clone(),
            lease,
            Arc::clone(&etag),
            Arc::clone(&lost),
        ));
        Ok(Lease {
            store,
            object,
            shown,
            holder,
            lease,
            etag,
            lost,
            renewer: Some(renewer),
        })
    }

    fn check(&self, described: &str) -> Result<(), DestError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(DestError::Busy {
                destination: described.to_string(),
                holder: format!(
                    ", whose writer lease {} this run could not renew in time (another writer may have taken it); nothing more is committed by this run",
                    self.shown
                ),
            });
        }
        Ok(())
    }

    async fn release(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.lost.swap(true, Ordering::SeqCst) {
            return;
        }
        let etag = self.etag.lock().ok().and_then(|e| e.clone());
        // Delete only our own lease: a renewal that still matches our ETag proves it is ours
        // (S3 has no conditional delete) and keeps others out until the delete.
        let still_ours = write_lease_if(&self.store, &self.object, &self.holder, self.lease, etag)
            .await
            .is_ok();
        if still_ours && let Err(e) = self.store.delete(&self.object).await {
            tracing::warn!(lease = %self.shown, error = %e, "could not delete the writer lease; it lapses on its own");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

/// Renews the lease every third of its time until aborted; marks it lost when a renewal fails.
async fn renew(
    store: Arc<dyn ObjectStore>,
    object: ObjPath,
    holder: String,
    lease: Duration,
    etag: Arc<Mutex<Option<String>>>,
    lost: Arc<AtomicBool>,
) {
    let every = lease / 3;
    let mut last_ok = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let current = etag.lock().ok().and_then(|e| e.clone());
        let renewed = write_lease_if(&store, &object, &holder, lease, current).await;
        match renewed {
            Ok(r) => {
                if let Ok(mut e) = etag.lock() {
                    *e = r.e_tag;
                }
                last_ok = std::time::Instant::now();
            }
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => {
                tracing::error!(lease = %object, "the writer lease was taken or removed by another writer");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                // A passing network error: retried at the next turn while the lease lasts.
                tracing::warn!(lease = %object, error = %e, "could not renew the writer lease");
                if last_ok.elapsed() + every >= lease {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// An S3 client for the bucket of `url`, configured from the environment (`AWS_*`) and then
/// `settings`, with conditional writes (the Delta log's put-if-absent and the lease need them).
fn s3_store<'a>(
    url: &Url,
    settings: impl IntoIterator<Item = &'a (String, String)>,
) -> object_store::Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
    for (key, value) in settings {
        let key: AmazonS3ConfigKey = key.parse()?;
        builder = builder.with_config(key, value);
    }
    let store = builder
        .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
        .build()?;
    Ok(Arc::new(store))
}

struct S3Factory;

impl ObjectStoreFactory for S3Factory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, ObjPath)> {
        let settings: Vec<(String, String)> = config
            .raw
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let store = s3_store(url, &settings)?;
        let path = ObjPath::from_url_path(url.path())?;
        Ok((store, path))
    }
}

impl LogStoreFactory for S3Factory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        // The default log store commits with put-if-absent, which the client above does with
        // `If-None-Match: *`: no external lock table is needed.
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Lets delta-rs open `s3://` tables through [`s3_store`] (once per process).
fn register_object_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let factory = Arc::new(S3Factory);
        for scheme in OBJECT_STORE_SCHEMES {
            if let Ok(url) = Url::parse(&format!("{scheme}://")) {
                object_store_factories().insert(url.clone(), factory.clone());
                logstore_factories().insert(url, factory.clone());
            }
        }
    });
}

/// Fsyncs a directory so a rename in it is durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `path` through a temporary file, fsynced, renamed, the directory fsynced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}
