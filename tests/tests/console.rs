//! The live web console in a real browser: headless Chromium driven over
//! WebDriver (`chromedriver`, spoken as plain HTTP/JSON). The page loads
//! from a node, lists the three members live and a created table's shards;
//! after kill -9 of a shard's primary the same page, never reloaded, shows
//! the node down and the promotion. A screenshot is kept in the test's temp
//! dir (and its path printed).
//!
//! Needs `chromium` and `chromium-driver` (Debian packages; `.ci/run`
//! installs them).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tstore_tests::{hash_table, Cluster};

const LIMIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 exchange; returns status and body. chromedriver keeps the
/// connection open whatever the request says, so the body is read by its
/// `Content-Length` (or its chunks), not to the end of the stream.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let exchange = async {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let lower = head.to_ascii_lowercase();
                let length = lower.lines().find_map(|l| {
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                let chunked = lower.contains("transfer-encoding: chunked");
                let complete = match length {
                    Some(len) => rest.len() >= len,
                    None if chunked => rest.contains("\r\n0\r\n\r\n") || rest.starts_with("0\r\n"),
                    None => n == 0,
                };
                if complete || n == 0 {
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| format!("no status in {head:?}"))?;
                    let body = if chunked {
                        dechunk(rest)
                    } else {
                        rest.to_owned()
                    };
                    return Ok((status, body));
                }
            }
            if n == 0 {
                return Err(format!("connection closed before an answer: {text:?}"));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("{method} {path} on {addr}: no answer within 30 s"))?
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    async fn start(profile: &std::path::Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install -y chromium chromium-driver, as .ci/run does)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut ready = false;
        for _ in 0..100 {
            if let Ok((200, body)) = http(addr, "GET", "/status", None).await {
                ready = body.contains("\"ready\":true");
                if ready {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not become ready on {addr}");
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--window-size=1200,900",
                     format!("--user-data-dir={}", profile.display())],
        }}}});
        let (status, body) = http(addr, "POST", "/session", Some(&caps)).await.unwrap();
        assert_eq!(status, 200, "new session: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Browser {
            driver,
            addr,
            session,
        }
    }

    async fn command(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let (status, text) = http(self.addr, method, &path, body).await.unwrap();
        assert_eq!(status, 200, "{method} {what}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].take()
    }

    async fn go(&self, url: &str) {
        self.command("POST", "url", Some(&json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body) in the page; its return value.
    async fn eval(&self, script: &str) -> Value {
        self.command(
            "POST",
            "execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn screenshot(&self, path: &std::path::Path) {
        let b64 = self.command("GET", "screenshot", None).await;
        let png = decode_base64(b64.as_str().expect("base64 PNG"));
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let v = A.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// What the page shows: members with their status, shard rows, event rows.
const READ_PAGE: &str = r#"
    const cells = tr => Array.from(tr.cells).map(td => td.textContent);
    return {
        members: Array.from(document.querySelectorAll('#members tbody tr')).map(cells),
        shards: Array.from(document.querySelectorAll('tr.shard')).map(cells),
        events: Array.from(document.querySelectorAll('tr.event')).map(cells),
        conn: document.getElementById('conn').textContent,
    };
"#;

fn status_of(page: &Value, node: &str) -> Option<String> {
    page["members"]
        .as_array()?
        .iter()
        .find_map(|m| (m[0].as_str()? == node).then(|| m[1].as_str().unwrap_or("").to_owned()))
}

#[tokio::test]
async fn the_console_shows_members_shards_and_a_failover_live_in_a_browser() {
    let mut c = Cluster::new();
    let ids = ["n1", "n2", "n3"];
    c.start_formed_with_http(&ids).await;
    c.create_table("n1", hash_table("web", 4)).await;
    let (_, t) = c.client("n1").await.unwrap().describe("web").await.unwrap();
    let victim = t.shards[0].replicas.primary.clone();
    let viewer = ids.iter().copied().find(|n| *n != victim).unwrap();

    let browser = Browser::start(&c.dir().join("chromium-profile")).await;
    browser
        .go(&format!("http://{}/", c.http_addr(viewer)))
        .await;
    let (page, took) = c
        .poll(
            "the console to list 3 live members and 4 shards",
            LIMIT,
            || async {
                let page = browser.eval(READ_PAGE).await;
                let live = ids
                    .iter()
                    .all(|n| status_of(&page, n).as_deref() == Some("live"));
                let shards = page["shards"].as_array().map_or(0, |s| s.len());
                Ok((live && shards == 4).then_some(page))
            },
        )
        .await
        .unwrap();
    println!("the console showed the cluster after {took:?}: {page}");
    let first = page["shards"][0].clone();
    assert_eq!(first[0], "web/0");
    assert_eq!(first[1], victim.as_str());
    assert_eq!(first[5], "healthy");

    c.kill9(&victim);
    let (page, took) = c
        .poll(
            "the console (not reloaded) to show the kill and the promotion",
            LIMIT,
            || async {
                let page = browser.eval(READ_PAGE).await;
                let down = status_of(&page, &victim).as_deref() == Some("down");
                let promoted = page["events"].as_array().is_some_and(|es| {
                    es.iter().any(|e| {
                        e[1] == "web/0"
                            && e[2].as_str().is_some_and(|w| {
                                w.starts_with("promoted")
                                    && w.contains(&format!("dropped {victim}"))
                            })
                    })
                });
                Ok((down && promoted).then_some(page))
            },
        )
        .await
        .unwrap();
    println!("the console showed {victim} down and web/0 promoted after {took:?}");
    assert_ne!(
        page["shards"][0][1],
        victim.as_str(),
        "web/0 has a new primary"
    );
    let shot = c.dir().join("console.png");
    browser.screenshot(&shot).await;
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    println!("screenshot: {} ({} bytes)", shot.display(), png.len());
    if let Ok(dir) = std::env::var("TSTORE_TEST_ARTIFACTS") {
        std::fs::copy(&shot, std::path::Path::new(&dir).join("console.png")).unwrap();
    }
}
