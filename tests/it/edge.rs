//! The HTTP edge against the real daemon: TLS (HTTP/2 and HTTP/1.1, live
//! certificate reload by rename, a broken certificate refused), the redirect
//! listener, security headers, CORS, compression, body limit, rate limit.
//! Clients: reqwest (Rust), curl and openssl s_client.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;

use crate::support::{Daemon, DataDir};

/// A test CA and leaf certificates it signs for `localhost`/`127.0.0.1`.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pagodirecto test CA");
        let cert = params.self_signed(&key).expect("ca");
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A new leaf: (certificate PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `path` the way certbot and editors do: a new file
/// renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn client(ca: &str, http1_only: bool) -> Client {
    let mut builder = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
        .timeout(Duration::from_secs(10));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

/// Waits until `https://<addr>/ready` answers 200 through `client`.
fn wait_https(daemon: &mut Daemon, client: &Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = daemon.try_wait() {
            panic!("daemon exited: {status}\n{}", daemon.log());
        }
        if let Ok(addr) = std::fs::read_to_string(daemon.data_dir.join("run/http.addr")) {
            let addr = addr.trim().to_string();
            if client
                .get(format!("https://{addr}/ready"))
                .send()
                .is_ok_and(|r| r.status() == 200)
            {
                daemon.addr = Some(addr.clone());
                return addr;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not ready over https\n{}", daemon.log());
}

/// The leaf certificate a new TLS connection to `addr` is given (PEM, no
/// whitespace), as openssl sees it.
fn served_certificate(addr: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from {addr}: {text}"));
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .expect("end")
        + start;
    squash(&text[start..end])
}

fn squash(pem: &str) -> String {
    let end = pem.find("-----END").unwrap_or(pem.len());
    pem[..end].split_whitespace().collect()
}

/// An open HTTP/1.1 keep-alive connection through `openssl s_client`.
struct OpenConnection {
    child: std::process::Child,
    received: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl OpenConnection {
    fn open(addr: &str, ca_file: &Path) -> Self {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", addr, "-CAfile"])
            .arg(ca_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        let mut out = child.stdout.take().expect("stdout");
        let (tx, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            received,
            seen: String::new(),
        }
    }

    /// Sends a GET on this same connection and waits for its 200.
    fn get_ok(&mut self, path: &str) {
        let before = self.seen.matches("HTTP/1.1 200").count();
        write!(
            self.child.stdin.as_mut().expect("stdin"),
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .expect("send on the open connection");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.seen.matches("HTTP/1.1 200").count() == before {
            let left = deadline.saturating_duration_since(Instant::now());
            let bytes = self.received.recv_timeout(left).unwrap_or_else(|err| {
                panic!("no 200 on the open connection ({err}); got: {}", self.seen)
            });
            self.seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for_log(daemon: &Daemon, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = daemon.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const SECURITY_HEADERS: &[&str] = &[
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "permissions-policy",
    "strict-transport-security",
    "x-request-id",
];

#[test]
fn tls_serves_h2_and_http11_and_swaps_certificates_without_dropping_connections() {
    let data = DataDir::new();
    let certs = data.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    let ca = Ca::new();
    let ca_file = certs.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("ca");
    let (cert_file, key_file) = (certs.join("fullchain.pem"), certs.join("privkey.pem"));
    let (cert_a, key_a) = ca.leaf();
    std::fs::write(&cert_file, &cert_a).expect("cert");
    std::fs::write(&key_file, &key_a).expect("key");
    let config = data.path().join("pagodirecto.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}\nredirect_http = \"127.0.0.1:0\"\n\
             cors_origins = [\"https://app.example\"]\nmax_body = \"4KiB\"\n\
             auth_rate_limit_per_minute = 5\nheader_read_timeout = \"30s\"\n",
            cert_file.display().to_string(),
            key_file.display().to_string()
        ),
    )
    .expect("config");
    let mut daemon = data.spawn(&["--config", config.to_str().expect("utf8")]);
    let h2 = client(&ca.pem, false);
    let addr = wait_https(&mut daemon, &h2);
    let base = format!("https://{addr}");

    // HTTP/2 by ALPN, and HTTP/1.1 for clients that only speak that.
    let res = h2.get(format!("{base}/health")).send().expect("h2");
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let res = client(&ca.pem, true)
        .get(format!("{base}/health"))
        .send()
        .expect("http/1.1");
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    let ca_arg = ca_file.to_str().expect("utf8");
    let url = format!("{base}/health");
    let fmt = ["-o", "/dev/null", "-w", "%{http_version} %{http_code}"];
    assert_eq!(
        curl(&[&["--cacert", ca_arg], &fmt[..], &[&url]].concat()),
        "2 200"
    );
    assert_eq!(
        curl(&[&["--cacert", ca_arg, "--http1.1"], &fmt[..], &[&url]].concat()),
        "1.1 200"
    );
    assert_eq!(squash(&served_certificate(&addr)), squash(&cert_a));

    // Security headers on the API, the web app and errors, HSTS included.
    for (path, status) in [
        ("/api/v1/auth/me", 401),
        ("/", 200),
        ("/api/v1/nope", 404),
        ("/customers/42", 200),
    ] {
        let res = h2.get(format!("{base}{path}")).send().expect("get");
        assert_eq!(res.status().as_u16(), status, "{path}");
        for name in SECURITY_HEADERS {
            assert!(
                res.headers().contains_key(*name),
                "{name} missing on {path}"
            );
        }
    }

    // API responses are compressed as asked; the web app comes precompressed.
    for encoding in ["br", "gzip", "zstd"] {
        let res = h2
            .get(format!("{base}/openapi.json"))
            .header("accept-encoding", encoding)
            .send()
            .expect("openapi");
        assert_eq!(res.headers()["content-encoding"], encoding);
    }
    let plain = h2
        .get(format!("{base}/openapi.json"))
        .send()
        .expect("openapi");
    assert!(!plain.headers().contains_key("content-encoding"));
    let app = h2
        .get(format!("{base}/"))
        .header("accept-encoding", "br")
        .send()
        .expect("app");
    assert_eq!(
        app.headers()["content-encoding"],
        "br",
        "one encoding, not two"
    );

    // CORS: the configured origin's preflight is allowed, another's is not.
    let preflight = |origin: &str| {
        h2.request(reqwest::Method::OPTIONS, format!("{base}/api/v1/customers"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .expect("preflight")
    };
    let allowed = preflight("https://app.example");
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let refused = preflight("https://elsewhere.example");
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin"),
        "{:?}",
        refused.headers()
    );

    // A body over max_body: 413 problem+json, declared or chunked.
    let big = format!(
        "{{\"email\": \"{}\", \"password\": \"x\"}}",
        "a".repeat(8192)
    );
    let res = h2
        .post(format!("{base}/api/v1/customers"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .expect("post");
    assert_eq!(res.status(), 413);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    // Plain HTTP on the redirect listener goes to HTTPS, same host and path.
    let log = wait_for_log(&daemon, "redirecting plain HTTP to HTTPS");
    let line = log
        .lines()
        .find(|l| l.contains("redirecting plain HTTP to HTTPS"))
        .expect("line");
    let redirect = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr= in the log line");
    let port = addr.rsplit(':').next().expect("port");
    let location = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://{redirect}/customers?q=1"),
    ]);
    assert_eq!(
        location,
        format!("308 https://127.0.0.1:{port}/customers?q=1")
    );

    // The certificate is renewed (renamed over): new connections get the new
    // one, a connection opened before keeps working.
    let mut open = OpenConnection::open(&addr, &ca_file);
    open.get_ok("/health");
    let (cert_b, key_b) = ca.leaf();
    replace(&key_file, &key_b);
    replace(&cert_file, &cert_b);
    let deadline = Instant::now() + Duration::from_secs(20);
    while squash(&served_certificate(&addr)) != squash(&cert_b) {
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    open.get_ok("/health");
    let res = client(&ca.pem, false)
        .get(format!("{base}/ready"))
        .send()
        .expect("a new client trusts the new certificate");
    assert_eq!(res.status(), 200);

    // A broken replacement is refused, named in the log, and B stays.
    replace(
        &cert_file,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    let log = wait_for_log(&daemon, "changed TLS certificate refused");
    let line = log
        .lines()
        .find(|l| l.contains("changed TLS certificate refused"))
        .expect("line");
    assert!(line.contains("fullchain.pem"), "{line}");
    assert_eq!(squash(&served_certificate(&addr)), squash(&cert_b));
    open.get_ok("/health");

    // The strict auth limit: 429 with Retry-After once the budget is spent
    // (some of the 5 per minute went to the header checks above).
    let codes: Vec<reqwest::blocking::Response> = (0..6)
        .map(|_| h2.get(format!("{base}/api/v1/auth/me")).send().expect("me"))
        .collect();
    let limited = codes
        .iter()
        .find(|r| r.status() == 429)
        .expect("a 429 within 6 requests");
    let retry = limited.headers()["retry-after"]
        .to_str()
        .expect("str")
        .parse::<u64>()
        .expect("seconds");
    assert!(retry >= 1, "{retry}");
    drop(open);
    assert!(daemon.stop().success());
}

#[test]
fn a_self_signed_certificate_is_generated_once_and_reused() {
    let data = DataDir::new();
    let env = [
        ("PAGODIRECTO_BACKUP__SCHEDULE", ""),
        ("PAGODIRECTO_SERVER__TLS", "self-signed"),
    ];
    let cert: PathBuf = data.path().join("tls/self-signed.crt");
    let key = data.path().join("tls/self-signed.key");
    let mut first_pem = String::new();
    for round in 0..2 {
        let mut daemon = data.spawn_env(&[], &env);
        let addr = wait_insecure(&mut daemon);
        let pem = std::fs::read_to_string(&cert).expect("certificate kept in the data dir");
        assert_eq!(squash(&served_certificate(&addr)), squash(&pem));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
        let headers = curl(&[
            "-k",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("https://{addr}/health"),
        ]);
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("strict-transport-security"),
            "{headers}"
        );
        if round == 0 {
            first_pem = pem;
        } else {
            assert_eq!(pem, first_pem, "the second start reuses the certificate");
        }
        assert!(daemon.stop().success());
    }
}

/// Waits for `/ready` over TLS without verifying (a self-signed certificate).
fn wait_insecure(daemon: &mut Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = daemon.try_wait() {
            panic!("daemon exited: {status}\n{}", daemon.log());
        }
        if let Ok(addr) = std::fs::read_to_string(daemon.data_dir.join("run/http.addr")) {
            let addr = addr.trim().to_string();
            let out = Command::new("curl")
                .args([
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                ])
                .arg(format!("https://{addr}/ready"))
                .output()
                .expect("curl");
            if out.stdout == b"200" {
                daemon.addr = Some(addr.clone());
                return addr;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not ready over https\n{}", daemon.log());
}

/// Every file of the web app and each precompressed variant arrives byte
/// for byte as built — over HTTP/1.1 with many requests pipelined behind a
/// reader that falls behind (so writes end part-way and resume), and over
/// HTTP/2 without TLS.
#[test]
fn the_web_apps_files_arrive_byte_for_byte_over_plain_tcp() {
    let data = DataDir::new();
    let mut daemon = data.spawn(&[]);
    daemon.wait_ready(Duration::from_secs(60));
    let addr = daemon.addr.clone().expect("ready");
    let addr = addr.trim();
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/dist");
    let mut files = Vec::new();
    let mut dirs = vec![dist.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dist") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    // (request path, Accept-Encoding, the bytes that must arrive)
    let mut expected: Vec<(String, &str, Vec<u8>)> = Vec::new();
    for file in &files {
        let name = file
            .strip_prefix(&dist)
            .expect("in dist")
            .to_str()
            .expect("utf8");
        let (original, encoding) = match name.rsplit_once('.') {
            Some((original, "br")) => (original, "br"),
            Some((original, "gz")) => (original, "gzip"),
            _ => (name, "identity"),
        };
        expected.push((
            format!("/{original}"),
            encoding,
            std::fs::read(file).expect("read"),
        ));
    }
    assert!(
        expected
            .iter()
            .any(|(_, e, b)| *e == "br" && b.len() > 50_000)
    );

    // HTTP/1.1: every variant ten times on one connection (~4 MB, more
    // than the socket buffers hold), all requests sent before a byte is read.
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let rounds = 10;
    let mut requests = Vec::new();
    for _ in 0..rounds {
        for (path, encoding, _) in &expected {
            requests.extend(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: {encoding}\r\n\r\n"
                )
                .bytes(),
            );
        }
    }
    let writer = {
        let mut stream = stream.try_clone().expect("clone");
        std::thread::spawn(move || stream.write_all(&requests).expect("send"))
    };
    // Let the daemon fill the socket buffers before reading anything.
    std::thread::sleep(Duration::from_millis(300));
    let mut reader = std::io::BufReader::new(stream);
    for round in 0..rounds {
        for (path, encoding, bytes) in &expected {
            let (status, headers, body) = read_response(&mut reader);
            assert_eq!(status, 200, "{path} ({encoding}), round {round}");
            let coding = headers
                .iter()
                .find(|(k, _)| k == "content-encoding")
                .map_or("identity", |(_, v)| v.as_str());
            assert_eq!(coding, *encoding, "{path}");
            assert!(
                body == *bytes,
                "{path} ({encoding}): the body differs from the build"
            );
        }
    }
    writer.join().expect("writer");

    // HTTP/2 without TLS (prior knowledge): the same bytes.
    let h2 = Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for (path, encoding, bytes) in &expected {
        let res = h2
            .get(format!("http://{addr}{path}"))
            .header("accept-encoding", *encoding)
            .send()
            .expect("h2c");
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert!(
            res.bytes().expect("body") == *bytes,
            "{path} ({encoding}) over h2c"
        );
    }
    assert!(daemon.stop().success());
}

/// One HTTP/1.1 response with a `Content-Length` body.
fn read_response(reader: &mut impl std::io::BufRead) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').expect("header line");
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (status, headers, body)
}
