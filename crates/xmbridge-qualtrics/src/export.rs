//! The response export flow (docs/design/qualtrics-api.md §6): start → poll → download → unzip →
//! stream-parse.
//!
//! The download goes to a temporary file, never into memory; the zip is then opened with its central
//! directory (a truncated download fails cleanly there and is fetched again), and the JSON inside is
//! split into responses without parsing them ([`ExportFile::for_each_raw_batch`]), handed over a
//! batch at a time so memory stays flat whatever the export size, and parsed by the caller
//! ([`parse_response`], or in place with [`crate::record::parse_record`]).

use crate::client::{Client, RetryMode};
use crate::error::Error;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// File formats of `POST /surveys/{id}/export-responses`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExportFormat {
    #[default]
    /// One JSON document holding every response (the default).
    Json,
    /// One JSON response per line.
    Ndjson,
    /// Comma-separated values.
    Csv,
    /// Tab-separated values.
    Tsv,
    /// An SPSS `.sav` file.
    Spss,
    /// XML.
    Xml,
}

impl ExportFormat {
    /// The API's name of the format (the request body's `format`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Json => "json",
            ExportFormat::Ndjson => "ndjson",
            ExportFormat::Csv => "csv",
            ExportFormat::Tsv => "tsv",
            ExportFormat::Spss => "spss",
            ExportFormat::Xml => "xml",
        }
    }
}

/// What to export and how patiently to wait for it.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The file format to export.
    pub format: ExportFormat,
    /// Zip the file (the API's default).
    pub compress: bool,
    /// Ask for a `continuationToken` to fetch only newer responses next time.
    pub allow_continuation: bool,
    /// Export only responses recorded or modified since the export that issued this token.
    pub continuation_token: Option<String>,
    /// `recordedDate` window, ISO-8601 (start inclusive, end exclusive).
    pub start_date: Option<String>,
    /// See `start_date`.
    pub end_date: Option<String>,
    /// At most this many responses (`limit`); `None` exports all.
    pub limit: Option<u64>,
    /// Any other body field of the API (`questionIds`, `surveyMetadataIds`, …), sent as is.
    pub extra: Map<String, Value>,
    /// First wait between progress polls; grows up to `max_poll_interval`.
    pub poll_interval: Duration,
    /// The longest wait between progress polls.
    pub max_poll_interval: Duration,
    /// Give up when the export has not completed after this long.
    pub max_wait: Duration,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            format: ExportFormat::Json,
            compress: true,
            allow_continuation: false,
            continuation_token: None,
            start_date: None,
            end_date: None,
            limit: None,
            extra: Map::new(),
            poll_interval: Duration::from_millis(250),
            max_poll_interval: Duration::from_secs(5),
            max_wait: Duration::from_secs(60 * 60),
        }
    }
}

impl ExportOptions {
    /// The request body; refuses combinations the API rejects.
    pub fn body(&self) -> Result<Value, Error> {
        if self.allow_continuation && self.continuation_token.is_some() {
            return Err(Error::Config(
                "allowContinuation and continuationToken cannot be sent together".into(),
            ));
        }
        let mut body = self.extra.clone();
        body.insert("format".into(), json!(self.format.as_str()));
        body.insert("compress".into(), json!(self.compress));
        if self.allow_continuation {
            body.insert("allowContinuation".into(), json!(true));
        }
        if let Some(t) = &self.continuation_token {
            body.insert("continuationToken".into(), json!(t));
        }
        if let Some(d) = &self.start_date {
            body.insert("startDate".into(), json!(d));
        }
        if let Some(d) = &self.end_date {
            body.insert("endDate".into(), json!(d));
        }
        if let Some(l) = self.limit {
            body.insert("limit".into(), json!(l));
        }
        Ok(Value::Object(body))
    }
}

/// `GET /surveys/{id}/export-responses/{progressId}`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExportProgress {
    #[serde(default)]
    /// How far the export is, 0 to 100.
    pub percent_complete: f64,
    /// `inProgress`, `complete` or `failed`.
    pub status: String,
    #[serde(default)]
    /// The file to download, once `status` is `complete`.
    pub file_id: Option<String>,
    #[serde(default)]
    /// The token for the next incremental export, when one was asked for.
    pub continuation_token: Option<String>,
    /// Some servers describe a failure here.
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Started {
    progress_id: String,
}

/// A downloaded export, in a temporary file deleted on drop.
#[derive(Debug)]
pub struct ExportFile {
    /// The survey exported (`SV_…`).
    pub survey_id: String,
    /// The export job's id (`ES_…`).
    pub progress_id: String,
    /// The downloaded file's id on the Qualtrics side.
    pub file_id: String,
    /// Present when the export was started with `allow_continuation` or a continuation token.
    pub continuation_token: Option<String>,
    /// The format the file was exported in.
    pub format: ExportFormat,
    /// True when the file is a zip archive (the export's `compress`).
    pub compressed: bool,
    /// Size of the downloaded file.
    pub bytes: u64,
    file: tempfile::NamedTempFile,
}

impl ExportFile {
    /// The temporary file on disk; it is deleted when this value is dropped.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Calls `on_response` for every response of a `json` or `ndjson` export, one at a time,
    /// and returns how many there were. Blocking: run it on a blocking thread.
    pub fn for_each_response(&self, on_response: impl FnMut(Value)) -> Result<u64, Error> {
        read_responses(self.path(), self.compressed, self.format, on_response)
    }

    /// Hands over the responses of a `json` or `ndjson` export `per_batch` at a time, each as
    /// its JSON text, unparsed, so that the caller can parse them on other threads
    /// ([`parse_response`], [`crate::record::parse_record`]). This checks the file's structure
    /// around the responses (`{"responses": [ … ]}`, or one per line); what is malformed inside
    /// a response is found by whoever parses it. `on_batch` may stop the read with an error,
    /// which is returned as is. Blocking: run it on a blocking thread.
    pub fn for_each_raw_batch(
        &self,
        per_batch: usize,
        on_batch: impl FnMut(RawResponses) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        read_raw_batches(
            self.path(),
            self.compressed,
            self.format,
            per_batch,
            on_batch,
        )
    }
}

/// Responses of an export file, a batch at a time (see [`ExportFile::for_each_raw_batch`]):
/// each response's JSON text, one after another in one buffer, so that a batch costs two
/// allocations whatever the number of responses in it.
#[derive(Debug, Default)]
pub struct RawResponses {
    /// Position in the file of the batch's first response, counted from 1.
    first: u64,
    text: Vec<u8>,
    ends: Vec<usize>,
}

impl RawResponses {
    /// Position in the file of the batch's first response, counted from 1 (for messages).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// How many responses the batch holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the batch holds no response.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each response's JSON text, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter()).map(|(a, &b)| &self.text[a..b])
    }
}

/// Parses the responses of an export file on disk (see [`ExportFile::for_each_response`]).
pub fn read_responses(
    path: &Path,
    compressed: bool,
    format: ExportFormat,
    mut on_response: impl FnMut(Value),
) -> Result<u64, Error> {
    read_raw_batches(path, compressed, format, 64, |batch| {
        for (n, text) in (batch.first()..).zip(batch.iter()) {
            on_response(parse_response(n, text)?);
        }
        Ok(())
    })
}

/// Parses response number `n` (counted from 1) of an export file, handed over by
/// [`ExportFile::for_each_raw_batch`].
pub fn parse_response(n: u64, text: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(text).map_err(|e| malformed_response(n, e))
}

/// A response of an export file that is not valid JSON. serde_json counts lines and columns
/// from the start of the text it was given: the response's, not the file's.
pub fn malformed_response(n: u64, e: serde_json::Error) -> Error {
    export_decode(format!(
        "response {n} of the file is not valid JSON: {e} (line and column within that response)"
    ))
}

/// See [`ExportFile::for_each_raw_batch`].
pub fn read_raw_batches(
    path: &Path,
    compressed: bool,
    format: ExportFormat,
    per_batch: usize,
    on_batch: impl FnMut(RawResponses) -> Result<(), Error>,
) -> Result<u64, Error> {
    if !matches!(format, ExportFormat::Json | ExportFormat::Ndjson) {
        return Err(Error::Config(format!(
            "cannot parse {} exports; use json or ndjson",
            format.as_str()
        )));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    // Large reads: the splitter's loop runs over whole buffers.
    const READ_BUFFER: usize = 256 * 1024;
    let batches = Batcher::new(per_batch, on_batch);
    if compressed {
        let mut archive =
            zip::ZipArchive::new(BufReader::new(file)).map_err(|e| Error::Zip(e.to_string()))?;
        let index = (0..archive.len())
            .find(|i| archive.by_index(*i).map(|f| f.is_file()).unwrap_or(false))
            .ok_or_else(|| Error::Zip("the archive holds no file".into()))?;
        let entry = archive
            .by_index(index)
            .map_err(|e| Error::Zip(e.to_string()))?;
        split(
            BufReader::with_capacity(READ_BUFFER, entry),
            format,
            batches,
        )
    } else {
        split(BufReader::with_capacity(READ_BUFFER, file), format, batches)
    }
}

fn split<R: BufRead, F: FnMut(RawResponses) -> Result<(), Error>>(
    reader: R,
    format: ExportFormat,
    mut batches: Batcher<F>,
) -> Result<u64, Error> {
    match format {
        ExportFormat::Ndjson => {
            for line in reader.split(b'\n') {
                let line = line.map_err(|e| Error::io("cannot read the export file", e))?;
                if line.trim_ascii().is_empty() {
                    continue;
                }
                batches.text().extend_from_slice(&line);
                batches.end_response()?;
            }
        }
        _ => Splitter { reader, offset: 0 }.document(&mut batches)?,
    }
    batches.finish()
}

/// Gathers responses' text into [`RawResponses`] and hands each full batch over.
struct Batcher<F> {
    per_batch: usize,
    on_batch: F,
    batch: RawResponses,
    count: u64,
}

impl<F: FnMut(RawResponses) -> Result<(), Error>> Batcher<F> {
    fn new(per_batch: usize, on_batch: F) -> Self {
        Batcher {
            per_batch: per_batch.max(1),
            on_batch,
            batch: RawResponses {
                first: 1,
                ..Default::default()
            },
            count: 0,
        }
    }

    /// Where the next response's text goes.
    fn text(&mut self) -> &mut Vec<u8> {
        &mut self.batch.text
    }

    /// The text written since the last response is one more response.
    fn end_response(&mut self) -> Result<(), Error> {
        self.batch.ends.push(self.batch.text.len());
        self.count += 1;
        if self.batch.len() >= self.per_batch {
            self.hand_over()?;
        }
        Ok(())
    }

    fn hand_over(&mut self) -> Result<(), Error> {
        let next = RawResponses {
            first: self.count + 1,
            text: Vec::with_capacity(self.batch.text.len()),
            ends: Vec::with_capacity(self.per_batch),
        };
        (self.on_batch)(std::mem::replace(&mut self.batch, next))
    }

    /// Hands over the last, partly filled batch; returns how many responses there were.
    fn finish(mut self) -> Result<u64, Error> {
        if !self.batch.is_empty() {
            self.hand_over()?;
        }
        Ok(self.count)
    }
}

/// A malformed export file.
fn export_decode(message: String) -> Error {
    Error::Decode {
        url: "export file".into(),
        message,
    }
}

/// Walks a JSON export, `{"responses": [ … ], …}`, and copies each response's text out without
/// parsing it: what starts and ends a value is found by counting brackets outside strings. The
/// keys around the array and their values are parsed (they are small); every response is parsed
/// later, by whoever takes the batch, which also finds what is malformed inside one.
struct Splitter<R> {
    reader: R,
    /// Bytes consumed so far, for messages.
    offset: u64,
}

impl<R: BufRead> Splitter<R> {
    fn malformed(&self, what: &str) -> Error {
        export_decode(format!(
            "the file is not a JSON export: expected {what} at byte {}",
            self.offset
        ))
    }

    fn consume(&mut self, n: usize) {
        self.reader.consume(n);
        self.offset += n as u64;
    }

    fn fill(&mut self) -> Result<&[u8], Error> {
        self.reader
            .fill_buf()
            .map_err(|e| Error::io("cannot read the export file", e))
    }

    /// The next byte that is not whitespace, not consumed; `None` at the end of the file.
    fn peek(&mut self) -> Result<Option<u8>, Error> {
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Ok(None);
            }
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => {
                    let b = buf[i];
                    self.consume(i);
                    return Ok(Some(b));
                }
                None => {
                    let n = buf.len();
                    self.consume(n);
                }
            }
        }
    }

    /// Consumes `byte` (after whitespace), or fails saying `what` was expected.
    fn expect(&mut self, byte: u8, what: &str) -> Result<(), Error> {
        if self.peek()? != Some(byte) {
            return Err(self.malformed(what));
        }
        self.consume(1);
        Ok(())
    }

    /// Copies the next value (object, array, string or scalar) to `out`, whole, without
    /// checking what is inside it.
    fn value(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let Some(first) = self.peek()? else {
            return Err(self.malformed("a value"));
        };
        let scalar = !matches!(first, b'{' | b'[' | b'"');
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                if scalar {
                    return Ok(());
                }
                return Err(self.malformed("the rest of a value (the file ends inside one)"));
            }
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                } else if scalar {
                    if matches!(b, b',' | b']' | b'}') || b.is_ascii_whitespace() {
                        end = Some(i);
                        break;
                    }
                } else {
                    match b {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                end = Some(i + 1);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            let n = end.unwrap_or(buf.len());
            out.extend_from_slice(&buf[..n]);
            self.consume(n);
            if end.is_some() {
                return Ok(());
            }
        }
    }

    /// The whole document: the root object, its `responses` array, nothing after it.
    fn document<F>(&mut self, batches: &mut Batcher<F>) -> Result<(), Error>
    where
        F: FnMut(RawResponses) -> Result<(), Error>,
    {
        let root = "an object with a \"responses\" array";
        self.expect(b'{', root)?;
        let mut found = false;
        let mut scratch = Vec::new();
        if self.peek()? == Some(b'}') {
            self.consume(1);
        } else {
            loop {
                scratch.clear();
                self.value(&mut scratch)?;
                let key: String = serde_json::from_slice(&scratch)
                    .map_err(|_| self.malformed("a key (a string) of the root object"))?;
                self.expect(b':', "':' after a key")?;
                if key == "responses" && !found {
                    found = true;
                    self.responses(batches)?;
                } else {
                    // Another key's value: checked to be JSON, then dropped.
                    scratch.clear();
                    self.value(&mut scratch)?;
                    serde_json::from_slice::<IgnoredAny>(&scratch).map_err(|e| {
                        export_decode(format!(
                            "the value of the export's {key:?} is not valid JSON: {e}"
                        ))
                    })?;
                }
                match self.peek()? {
                    Some(b',') => self.consume(1),
                    Some(b'}') => {
                        self.consume(1);
                        break;
                    }
                    _ => return Err(self.malformed("',' or '}' in the root object")),
                }
            }
        }
        if self.peek()?.is_some() {
            return Err(self.malformed("the end of the file after the root object"));
        }
        if !found {
            return Err(self.malformed(root));
        }
        Ok(())
    }

    /// The `responses` array, each element handed to `batches` as its text.
    fn responses<F>(&mut self, batches: &mut Batcher<F>) -> Result<(), Error>
    where
        F: FnMut(RawResponses) -> Result<(), Error>,
    {
        self.expect(b'[', "'[' (the responses array)")?;
        if self.peek()? == Some(b']') {
            self.consume(1);
            return Ok(());
        }
        loop {
            self.value(batches.text())?;
            batches.end_response()?;
            match self.peek()? {
                Some(b',') => self.consume(1),
                Some(b']') => {
                    self.consume(1);
                    return Ok(());
                }
                _ => return Err(self.malformed("',' or ']' after a response")),
            }
        }
    }
}

/// Downloads tried when the zip turns out truncated.
const DOWNLOAD_ATTEMPTS: u32 = 3;

/// The wait before the next progress poll: the backoff `wait`, or less when `percentComplete`
/// says the export will be done sooner (linear estimate from the time so far). Never less
/// than [`MIN_POLL_WAIT`], so a nearly finished export is polled a few times a second at most.
fn next_poll_wait(wait: Duration, elapsed: Duration, percent_complete: f64) -> Duration {
    if !(percent_complete > 0.0 && percent_complete < 100.0) {
        return wait;
    }
    let remaining = elapsed.as_secs_f64() * (100.0 - percent_complete) / percent_complete;
    Duration::from_secs_f64(remaining.min(wait.as_secs_f64())).max(MIN_POLL_WAIT.min(wait))
}

/// See [`next_poll_wait`].
const MIN_POLL_WAIT: Duration = Duration::from_millis(200);

impl Client {
    /// `POST /surveys/{id}/export-responses` → the `progressId`.
    ///
    /// Retried like a GET (5xx, 429, dropped connections): starting an export changes nothing a
    /// user can see, and an export started twice only leaves an unread job behind. The retry
    /// sends the same body, so a continuation token asks for the same responses again (the
    /// token is only replaced by the export that completes and is committed).
    pub async fn start_response_export(
        &self,
        survey_id: &str,
        opts: &ExportOptions,
    ) -> Result<String, Error> {
        let body = opts.body()?;
        let url = self.url(&["surveys", survey_id, "export-responses"]);
        let started: Started = self.post(url, &body, RetryMode::Idempotent).await?;
        Ok(started.progress_id)
    }

    /// `GET /surveys/{id}/export-responses/{progressId}`
    pub async fn response_export_progress(
        &self,
        survey_id: &str,
        progress_id: &str,
    ) -> Result<ExportProgress, Error> {
        self.get(self.url(&["surveys", survey_id, "export-responses", progress_id]))
            .await
    }

    /// `GET /surveys/{id}/export-responses/{fileId}/file` streamed into a temporary file; returns
    /// the file and its size.
    ///
    /// A connection that breaks mid-body (a dropped download) starts the download over, up to
    /// [`crate::RetryPolicy::max_retries`] times; failures before the body are retried like any GET.
    pub async fn download_response_export(
        &self,
        survey_id: &str,
        file_id: &str,
    ) -> Result<(tempfile::NamedTempFile, u64), Error> {
        let url = self.url(&["surveys", survey_id, "export-responses", file_id, "file"]);
        // Where the download goes, and what to do when it cannot go there, in the error.
        let in_tmp = |what: &str| {
            format!(
                "{what} in {} for the export download (set TMPDIR to a writable directory with room)",
                std::env::temp_dir().display()
            )
        };
        let tmp = tempfile::Builder::new()
            .prefix("xmbridge-export-")
            .tempfile()
            .map_err(|e| Error::io(in_tmp("cannot create a temporary file"), e))?;
        let mut retry = 0u32;
        loop {
            let std_file = tmp
                .as_file()
                .try_clone()
                .map_err(|e| Error::io("cannot open the temporary file", e))?;
            let mut out = tokio::fs::File::from_std(std_file);
            // A previous attempt may have written part of the file.
            out.set_len(0)
                .await
                .map_err(|e| Error::io("cannot truncate the export file", e))?;
            out.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| Error::io("cannot rewind the export file", e))?;
            let mut resp = self.get_file(&url).await?;
            let mut bytes = 0u64;
            let broken = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        bytes += chunk.len() as u64;
                        out.write_all(&chunk)
                            .await
                            .map_err(|e| Error::io(in_tmp("cannot write the export file"), e))?;
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(Error::transport(url.as_str(), e)),
                }
            };
            out.flush()
                .await
                .map_err(|e| Error::io(in_tmp("cannot write the export file"), e))?;
            match broken {
                None => return Ok((tmp, bytes)),
                Some(err) if retry < self.retry_policy().max_retries => {
                    self.wait_before_retry(&mut retry, None, &err).await;
                }
                Some(err) => return Err(err),
            }
        }
    }

    /// Runs the whole export of one survey: start, poll until `complete`, download.
    ///
    /// Polling stops on 404 (the export is gone) and on `failed`. A zip that does not open is
    /// downloaded again (up to 3 times).
    pub async fn export_responses(
        &self,
        survey_id: &str,
        opts: &ExportOptions,
    ) -> Result<ExportFile, Error> {
        let requested = Instant::now();
        let progress_id = self.start_response_export(survey_id, opts).await?;
        let started = Instant::now();
        let mut wait = opts.poll_interval;
        let done = loop {
            let p = self
                .response_export_progress(survey_id, &progress_id)
                .await?;
            match p.status.as_str() {
                "complete" => break p,
                "failed" => {
                    let detail = p
                        .error
                        .as_ref()
                        .and_then(|e| e.get("errorMessage"))
                        .and_then(Value::as_str)
                        .unwrap_or("Qualtrics reported status 'failed'");
                    return Err(Error::Export {
                        survey_id: survey_id.into(),
                        message: xmbridge_auth::upstream_text(detail),
                    });
                }
                _ => {}
            }
            if started.elapsed() >= opts.max_wait {
                return Err(Error::Export {
                    survey_id: survey_id.into(),
                    message: format!(
                        "not complete after {:?} ({}%)",
                        opts.max_wait, p.percent_complete
                    ),
                });
            }
            tokio::time::sleep(next_poll_wait(wait, started.elapsed(), p.percent_complete)).await;
            wait = (wait * 2).min(opts.max_poll_interval);
        };
        let waited = requested.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        self.add_export_wait(waited);
        let file_id = done.file_id.clone().ok_or_else(|| Error::Export {
            survey_id: survey_id.into(),
            message: "status is complete but no fileId was given".into(),
        })?;
        let mut attempt = 0;
        let (file, bytes) = loop {
            attempt += 1;
            let (file, bytes) = self.download_response_export(survey_id, &file_id).await?;
            if !opts.compress {
                break (file, bytes);
            }
            let path = file.path().to_path_buf();
            let check = tokio::task::spawn_blocking(move || -> Result<(), Error> {
                let f = std::fs::File::open(&path)
                    .map_err(|e| Error::io("cannot open the export file", e))?;
                zip::ZipArchive::new(BufReader::new(f)).map_err(|e| Error::Zip(e.to_string()))?;
                Ok(())
            })
            .await
            .map_err(|e| Error::Zip(format!("checking the zip failed: {e}")))?;
            match check {
                Ok(()) => break (file, bytes),
                Err(e) if attempt < DOWNLOAD_ATTEMPTS => {
                    tracing::warn!(survey_id, attempt, error = %e, "export download unusable; downloading again");
                    let delay = self.retry_policy().backoff(attempt - 1);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(ExportFile {
            survey_id: survey_id.into(),
            progress_id,
            file_id,
            continuation_token: done.continuation_token,
            format: opts.format,
            compressed: opts.compress,
            bytes,
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(json: &str) -> Result<(u64, Vec<Value>), Error> {
        let mut v = Vec::new();
        let batches = Batcher::new(2, |batch: RawResponses| {
            for (n, text) in (batch.first()..).zip(batch.iter()) {
                v.push(parse_response(n, text)?);
            }
            Ok(())
        });
        let n = split(json.as_bytes(), ExportFormat::Json, batches)?;
        Ok((n, v))
    }

    /// Every batch's responses' text, as strings.
    fn raw_batches(json: &str, per_batch: usize) -> Result<Vec<(u64, Vec<String>)>, Error> {
        let mut out = Vec::new();
        let batches = Batcher::new(per_batch, |batch: RawResponses| {
            let texts = batch.iter().map(|t| String::from_utf8_lossy(t).into());
            out.push((batch.first(), texts.collect()));
            Ok(())
        });
        split(json.as_bytes(), ExportFormat::Json, batches)?;
        Ok(out)
    }

    #[test]
    fn poll_waits_follow_percent_complete() {
        let ms = Duration::from_millis;
        // No usable progress: the backoff.
        assert_eq!(next_poll_wait(ms(2000), ms(1750), 0.0), ms(2000));
        assert_eq!(next_poll_wait(ms(2000), ms(1750), 100.0), ms(2000));
        // 70 % after 1.75 s: 0.75 s to go.
        assert_eq!(next_poll_wait(ms(2000), ms(1750), 70.0), ms(750));
        // Slow progress never waits longer than the backoff, nearly done never below 200 ms.
        assert_eq!(next_poll_wait(ms(2000), ms(1000), 1.0), ms(2000));
        assert_eq!(next_poll_wait(ms(2000), ms(1000), 99.9), ms(200));
        assert_eq!(next_poll_wait(ms(100), ms(1000), 99.9), ms(100));
    }

    #[test]
    fn streams_responses_and_skips_other_keys() {
        let (n, v) = collect(
            r#"{"meta":{"x":[1,2]},"responses":[{"responseId":"R_1","values":{"QID1":2}},
               {"responseId":"R_2","values":{}}],"tail":null}"#,
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(v[1]["responseId"], "R_2");
        assert_eq!(collect(r#"{"responses":[]}"#).unwrap().0, 0);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(collect(r#"{"other":[]}"#).is_err());
        assert!(collect(r#"{"responses":[{"a":1}"#).is_err(), "truncated");
        assert!(collect(r#"[]"#).is_err());
        assert!(collect(r#"{"responses":[]} trailing"#).is_err());
    }

    /// Raw responses are each one response's exact JSON text, in order and in batches; what
    /// is malformed inside a response is found by its parser, with the response's number.
    #[test]
    fn raw_batches_split_the_file() {
        let body = r#"{"meta":1,"responses":[ {"responseId":"R_1","values":{"QID1":[1,"a]}\\\"{"]}},
            {"responseId":"R_2"} ,"text",-1.5e3,{"x":{}}] , "tail": [true,{"y":null}]}
        "#;
        let got = raw_batches(body, 2).unwrap();
        assert_eq!(
            got,
            [
                (
                    1,
                    vec![
                        r#"{"responseId":"R_1","values":{"QID1":[1,"a]}\\\"{"]}}"#.to_string(),
                        r#"{"responseId":"R_2"}"#.to_string()
                    ]
                ),
                (3, vec![r#""text""#.to_string(), "-1.5e3".to_string()]),
                (5, vec![r#"{"x":{}}"#.to_string()]),
            ]
        );
        let bad = r#"{"responses":[{"responseId":"R_1"},{"responseId":}]}"#;
        let texts = raw_batches(bad, 64).unwrap();
        let e = parse_response(2, texts[0].1[1].as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e:?}");
        assert!(e.to_string().contains("response 2 of the file"), "{e}");
        assert!(matches!(collect(bad), Err(Error::Decode { .. })));
    }

    /// The structure around the responses is checked by the splitter, with the byte offset.
    #[test]
    fn splitter_refuses_what_is_not_an_export() {
        for (body, expected) in [
            ("", "expected an object"),
            ("[]", "expected an object"),
            (r#"{"responses":{}}"#, "'[' (the responses array)"),
            (
                r#"{"responses":[{"a":1}"#,
                "',' or ']' after a response at byte 21",
            ),
            (r#"{"responses":[{"a":[1"#, "the file ends inside one"),
            (
                r#"{"responses":[{"a":1} {"b":2}]}"#,
                "',' or ']' after a response",
            ),
            (r#"{"responses":[]} x"#, "the end of the file"),
            (
                r#"{"responses":[],"other":[1,}"#,
                "\"other\" is not valid JSON",
            ),
            (r#"{3:[]}"#, "a key (a string)"),
            (
                r#"{"other":[]}"#,
                "expected an object with a \"responses\" array at byte 12",
            ),
        ] {
            let e = raw_batches(body, 64).unwrap_err();
            assert!(matches!(e, Error::Decode { .. }), "{body}: {e:?}");
            assert!(e.to_string().contains(expected), "{body}: {e}");
        }
        // An error from the caller stops the read and comes back as is.
        let body = r#"{"responses":[1,2,3,4,5]}"#;
        let mut handed = 0;
        let stop = split(
            body.as_bytes(),
            ExportFormat::Json,
            Batcher::new(2, |_| {
                handed += 1;
                Err(Error::Config("stop".into()))
            }),
        );
        assert!(matches!(stop, Err(Error::Config(_))), "{stop:?}");
        assert_eq!(handed, 1);
    }

    #[test]
    fn ndjson_and_zip_files() {
        let dir = tempfile::tempdir().unwrap();
        let nd = dir.path().join("a.ndjson");
        std::fs::write(
            &nd,
            "{\"responseId\":\"R_1\"}\n\n{\"responseId\":\"R_2\"}\n",
        )
        .unwrap();
        assert_eq!(
            read_responses(&nd, false, ExportFormat::Ndjson, |_| {}).unwrap(),
            2
        );

        let zpath = dir.path().join("a.zip");
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&zpath).unwrap());
        zw.start_file("Survey.json", zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(br#"{"responses":[{"values":{"a":1,"b":2}}]}"#)
            .unwrap();
        zw.finish().unwrap();
        let mut values = 0;
        let n = read_responses(&zpath, true, ExportFormat::Json, |r| {
            values += r["values"].as_object().map(|m| m.len()).unwrap_or(0);
        })
        .unwrap();
        assert_eq!((n, values), (1, 2));

        // A truncated zip fails cleanly.
        let bytes = std::fs::read(&zpath).unwrap();
        let cut = dir.path().join("cut.zip");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            read_responses(&cut, true, ExportFormat::Json, |_| {}),
            Err(Error::Zip(_))
        ));
    }

    #[test]
    fn body_fields() {
        let opts = ExportOptions {
            allow_continuation: true,
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(
            opts.body().unwrap(),
            json!({"format":"json","compress":true,"allowContinuation":true,"limit":5})
        );
        let bad = ExportOptions {
            allow_continuation: true,
            continuation_token: Some("t".into()),
            ..Default::default()
        };
        assert!(bad.body().is_err());
    }
}
