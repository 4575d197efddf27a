//! The response export flow (docs/design/qualtrics-api.md §6): start → poll → download → unzip →
//! stream-parse.
//!
//! The download goes to a temporary file, never into memory; the zip is then opened with its central
//! directory (a truncated download fails cleanly there and is fetched again), and the JSON inside is
//! parsed one response at a time so memory stays flat whatever the export size.

use crate::client::{Client, RetryMode};
use crate::error::Error;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
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

    /// Like [`Self::for_each_response`], but hands over each response's JSON text unparsed
    /// (checked to be well-formed), so that the caller can parse responses on other threads.
    pub fn for_each_raw_response(
        &self,
        on_response: impl FnMut(Box<RawValue>),
    ) -> Result<u64, Error> {
        read_responses_as(self.path(), self.compressed, self.format, on_response)
    }
}

/// Parses the responses of an export file on disk (see [`ExportFile::for_each_response`]).
pub fn read_responses(
    path: &Path,
    compressed: bool,
    format: ExportFormat,
    on_response: impl FnMut(Value),
) -> Result<u64, Error> {
    read_responses_as(path, compressed, format, on_response)
}

/// [`read_responses`], each response deserialized as `T` (a [`Value`], or a [`RawValue`] to
/// parse later).
fn read_responses_as<T: DeserializeOwned>(
    path: &Path,
    compressed: bool,
    format: ExportFormat,
    mut on_response: impl FnMut(T),
) -> Result<u64, Error> {
    if !matches!(format, ExportFormat::Json | ExportFormat::Ndjson) {
        return Err(Error::Config(format!(
            "cannot parse {} exports; use json or ndjson",
            format.as_str()
        )));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    if compressed {
        let mut archive =
            zip::ZipArchive::new(BufReader::new(file)).map_err(|e| Error::Zip(e.to_string()))?;
        let index = (0..archive.len())
            .find(|i| archive.by_index(*i).map(|f| f.is_file()).unwrap_or(false))
            .ok_or_else(|| Error::Zip("the archive holds no file".into()))?;
        let entry = archive
            .by_index(index)
            .map_err(|e| Error::Zip(e.to_string()))?;
        parse_stream(BufReader::new(entry), format, &mut on_response)
    } else {
        parse_stream(BufReader::new(file), format, &mut on_response)
    }
}

fn parse_stream<R: Read, T: DeserializeOwned>(
    reader: BufReader<R>,
    format: ExportFormat,
    on_response: &mut dyn FnMut(T),
) -> Result<u64, Error> {
    let decode = export_decode;
    match format {
        ExportFormat::Ndjson => {
            let mut n = 0;
            for line in reader.lines() {
                let line = line.map_err(|e| Error::io("cannot read the export file", e))?;
                if line.trim().is_empty() {
                    continue;
                }
                on_response(serde_json::from_str(&line).map_err(decode)?);
                n += 1;
            }
            Ok(n)
        }
        _ => {
            let mut de = serde_json::Deserializer::from_reader(reader);
            let n = Root(on_response).deserialize(&mut de).map_err(decode)?;
            de.end().map_err(decode)?;
            Ok(n)
        }
    }
}

/// A malformed export file.
fn export_decode(e: serde_json::Error) -> Error {
    Error::Decode {
        url: "export file".into(),
        message: e.to_string(),
    }
}

/// Parses one response handed over by [`ExportFile::for_each_raw_response`], with the same
/// error as [`ExportFile::for_each_response`] for a malformed one.
pub fn parse_raw_response(raw: &RawValue) -> Result<Value, Error> {
    serde_json::from_str(raw.get()).map_err(export_decode)
}

/// `{"responses": [...]}` visited element by element (other keys skipped).
struct Root<'f, T>(&'f mut dyn FnMut(T));

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Root<'_, T> {
    type Value = u64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Root<'_, T> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a \"responses\" array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut count = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "responses" && count.is_none() {
                count = Some(map.next_value_seed(Responses(&mut *self.0))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        count.ok_or_else(|| de::Error::missing_field("responses"))
    }
}

struct Responses<'f, T>(&'f mut dyn FnMut(T));

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Responses<'_, T> {
    type Value = u64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Responses<'_, T> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of responses")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while let Some(v) = seq.next_element::<T>()? {
            (self.0)(v);
            n += 1;
        }
        Ok(n)
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
        let tmp = tempfile::Builder::new()
            .prefix("xmbridge-export-")
            .tempfile()
            .map_err(|e| Error::io("cannot create a temporary file", e))?;
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
                            .map_err(|e| Error::io("cannot write the export file", e))?;
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(Error::transport(url.as_str(), e)),
                }
            };
            out.flush()
                .await
                .map_err(|e| Error::io("cannot write the export file", e))?;
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
        let n = parse_stream(
            BufReader::new(json.as_bytes()),
            ExportFormat::Json,
            &mut |r| v.push(r),
        )?;
        Ok((n, v))
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

    /// Raw responses are each one response's exact JSON text, in order; a file that breaks
    /// part way hands over the responses before the break, then fails.
    #[test]
    fn raw_responses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        let body = r#"{"meta":1,"responses":[{"responseId":"R_1","values":{"QID1":[1,"a]"]}}, {"responseId":"R_2"}]}"#;
        std::fs::write(&path, body).unwrap();
        let mut raw = Vec::new();
        let n = read_responses_as(&path, false, ExportFormat::Json, |r: Box<RawValue>| {
            raw.push(r.get().to_string())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            raw,
            [
                r#"{"responseId":"R_1","values":{"QID1":[1,"a]"]}}"#,
                r#"{"responseId":"R_2"}"#
            ]
        );
        std::fs::write(
            &path,
            r#"{"responses":[{"responseId":"R_1"},{"responseId":}]}"#,
        )
        .unwrap();
        let mut seen = 0;
        let read = read_responses_as(&path, false, ExportFormat::Json, |_: Box<RawValue>| {
            seen += 1
        });
        assert!(matches!(read, Err(Error::Decode { .. })), "{read:?}");
        assert_eq!(seen, 1);
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
