//! The client against a scripted HTTP server: retries, Retry-After, the export flow's edge cases.
//! (The simulator covers the happy paths; here each answer is chosen exactly.)

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xmbridge_qualtrics::{Auth, BaseUrl, Client, Error, ExportOptions, RetryPolicy};

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn json(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type", "application/json".into())],
        body: body.as_bytes().to_vec(),
    }
}

fn error(status: u16) -> Reply {
    json(
        status,
        &format!(
            r#"{{"meta":{{"httpStatus":"{status} - X","requestId":"rq","error":{{"errorCode":"E_{status}","errorMessage":"scripted"}}}}}}"#
        ),
    )
}

type Handler = dyn Fn(&str, &str, usize) -> Reply + Send + Sync;

/// Serves `handler(method, path, nth call of that method+path)` on loopback; returns the base URL
/// and the per-route call counts.
async fn serve(handler: Arc<Handler>) -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let c2 = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let counts = c2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let head_end = loop {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = sock.read(&mut tmp).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let mut first = head.lines().next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                let nth = {
                    let mut c = counts.lock().unwrap();
                    let e = c.entry(format!("{method} {path}")).or_insert(0);
                    *e += 1;
                    *e
                };
                let r = handler(&method, &path, nth);
                let mut out = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    r.status,
                    r.body.len()
                );
                for (k, v) in &r.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = sock.write_all(out.as_bytes()).await;
                let _ = sock.write_all(&r.body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), counts)
}

fn client(base: &str) -> Client {
    Client::builder(BaseUrl::parse(base).unwrap(), Auth::api_token("t"))
        .retry(RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(1),
            ..Default::default()
        })
        .jitter_seed(1)
        .build()
        .unwrap()
}

fn zip_of(json: &str) -> Vec<u8> {
    let mut cur = std::io::Cursor::new(Vec::new());
    let mut zw = zip::ZipWriter::new(&mut cur);
    zw.start_file("Survey.json", zip::write::SimpleFileOptions::default())
        .unwrap();
    zw.write_all(json.as_bytes()).unwrap();
    zw.finish().unwrap();
    cur.into_inner()
}

fn fast() -> ExportOptions {
    ExportOptions {
        allow_continuation: true,
        poll_interval: Duration::from_millis(5),
        max_poll_interval: Duration::from_millis(10),
        ..Default::default()
    }
}

const EXPORTS: &str = "/API/v3/surveys/SV_1/export-responses";

#[tokio::test]
async fn export_round_trip_survives_429_503_and_a_truncated_zip() {
    let zip = zip_of(r#"{"responses":[{"values":{"a":1}},{"values":{"a":2,"b":3}}]}"#);
    let handler = Arc::new(move |m: &str, p: &str, n: usize| match (m, p) {
        ("POST", EXPORTS) if n == 1 => {
            let mut r = error(429);
            r.headers.push(("Retry-After", "0".into()));
            r
        }
        ("POST", EXPORTS) => json(
            200,
            r#"{"result":{"progressId":"ES_1","percentComplete":0,"status":"inProgress"},"meta":{}}"#,
        ),
        ("GET", p) if p == format!("{EXPORTS}/ES_1") => match n {
            1 => json(
                200,
                r#"{"result":{"percentComplete":40.0,"status":"inProgress"},"meta":{}}"#,
            ),
            2 => error(503),
            _ => json(
                200,
                r#"{"result":{"percentComplete":100.0,"status":"complete","fileId":"F-1","continuationToken":"CT"},"meta":{}}"#,
            ),
        },
        ("GET", p) if p == format!("{EXPORTS}/F-1/file") => match n {
            1 => Reply {
                status: 200,
                headers: vec![],
                body: zip[..zip.len() / 2].to_vec(),
            },
            _ => Reply {
                status: 200,
                headers: vec![("Content-Type", "application/zip".into())],
                body: zip.clone(),
            },
        },
        _ => error(404),
    });
    let (base, counts) = serve(handler).await;
    let c = client(&base);
    let file = c.export_responses("SV_1", &fast()).await.unwrap();
    assert_eq!(file.file_id, "F-1");
    assert_eq!(file.continuation_token.as_deref(), Some("CT"));
    let mut values = 0;
    let n = file
        .for_each_response(|r| values += r["values"].as_object().unwrap().len())
        .unwrap();
    assert_eq!((n, values), (2, 3));
    let counts = counts.lock().unwrap();
    assert_eq!(counts[&format!("POST {EXPORTS}")], 2, "429 retried once");
    // One 429 (the 503 is a transient failure, not a throttle).
    assert_eq!(c.throttled(), 1);
    assert_eq!(
        counts[&format!("GET {EXPORTS}/ES_1")],
        3,
        "503 poll retried"
    );
    assert_eq!(
        counts[&format!("GET {EXPORTS}/F-1/file")],
        2,
        "truncated zip fetched again"
    );
    assert_eq!(c.api_calls(), 7);
}

/// Starting an export creates nothing a user sees: a 5xx is retried like a GET's.
#[tokio::test]
async fn export_start_is_retried_on_5xx() {
    let (base, counts) = serve(Arc::new(|_: &str, _: &str, _| error(500))).await;
    let c = client(&base);
    let err = c.export_responses("SV_1", &fast()).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(
        counts.lock().unwrap()[&format!("POST {EXPORTS}")],
        4,
        "1 + 3 retries"
    );
}

#[tokio::test]
async fn polling_stops_on_404_and_on_failed() {
    let handler = Arc::new(|m: &str, p: &str, _| match (m, p) {
        ("POST", _) => json(200, r#"{"result":{"progressId":"ES_9"},"meta":{}}"#),
        _ => error(404),
    });
    let (base, counts) = serve(handler).await;
    let err = client(&base)
        .export_responses("SV_1", &fast())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(counts.lock().unwrap()[&format!("GET {EXPORTS}/ES_9")], 1);

    let handler = Arc::new(|m: &str, _: &str, _| match m {
        "POST" => json(200, r#"{"result":{"progressId":"ES_9"},"meta":{}}"#),
        _ => json(
            200,
            r#"{"result":{"status":"failed","percentComplete":10,"error":{"errorCode":"X","errorMessage":"too big"}},"meta":{}}"#,
        ),
    });
    let (base, _) = serve(handler).await;
    let err = client(&base)
        .export_responses("SV_1", &fast())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Export { .. }), "{err}");
    assert!(err.to_string().contains("too big"), "{err}");
}

#[tokio::test]
async fn retries_give_up_after_the_limit() {
    let (base, counts) = serve(Arc::new(|_: &str, _: &str, _| error(503))).await;
    let err = client(&base).whoami().await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert!(err.is_transient());
    assert_eq!(
        counts.lock().unwrap()["GET /API/v3/whoami"],
        4,
        "1 + 3 retries"
    );
}

#[tokio::test]
async fn literal_string_next_page_ends_the_list() {
    let (base, _) = serve(Arc::new(|_: &str, _: &str, _| {
        json(
            200,
            r#"{"result":{"elements":[{"id":"SV_1","name":"a"}],"nextPage":"string"},"meta":{}}"#,
        )
    }))
    .await;
    use futures_util::TryStreamExt;
    let all: Vec<_> = client(&base).surveys().try_collect().await.unwrap();
    assert_eq!(all.len(), 1);
}
