//! Helpers for API tests: a running daemon with two tenants and a JSON client.

use std::process::Stdio;

use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::support::{BIN, Daemon, DataDir};

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }

    /// Asserts an RFC 9457 problem of `kind` (the last segment of `type`).
    #[track_caller]
    pub fn expect_problem(self, status: u16, kind: &str) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(
            self.body["type"],
            format!("/problems/{kind}"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        self
    }
}

/// A daemon with the first tenant's owner logged in.
pub struct Crm {
    pub data: DataDir,
    /// Held so the daemon runs as long as the fixture (stopped on drop).
    #[allow(dead_code)]
    pub daemon: Daemon,
    pub base: String,
    pub http: Client,
    pub owner: String,
}

pub const PASSWORD: &str = "correct horse battery staple";

impl Crm {
    pub fn start() -> Self {
        let data = DataDir::new();
        let daemon = data.start();
        Self::attach(data, daemon)
    }

    /// Wraps a daemon that is already ready, logging in its first owner.
    pub fn attach(data: DataDir, daemon: Daemon) -> Self {
        let base = format!("http://{}", daemon.addr.clone().expect("ready").trim());
        let http = Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("client");
        let text = std::fs::read_to_string(data.path().join("secrets/initial-owner.txt"))
            .expect("first owner file");
        let password = text
            .split_whitespace()
            .skip_while(|w| *w != "password")
            .nth(1)
            .expect("password in file")
            .to_string();
        let mut crm = Self {
            data,
            daemon,
            base,
            http,
            owner: String::new(),
        };
        crm.owner = crm.login("owner@pagodirecto.local", &password).0;
        crm
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, token: &str, path: &str) -> Resp {
        self.request(Method::GET, path, Some(token), None, &[])
    }

    pub fn post(&self, token: &str, path: &str, body: Value) -> Resp {
        self.request(Method::POST, path, Some(token), Some(body), &[])
    }

    /// PATCH with `If-Match: etag`.
    pub fn patch(&self, token: &str, path: &str, etag: &str, body: Value) -> Resp {
        self.request(
            Method::PATCH,
            path,
            Some(token),
            Some(body),
            &[("if-match", etag)],
        )
    }

    /// (access token, refresh token)
    pub fn login(&self, email: &str, password: &str) -> (String, String) {
        let res = self
            .request(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"email": email, "password": password})),
                &[],
            )
            .expect(200);
        (
            res.body["access_token"]
                .as_str()
                .expect("access")
                .to_string(),
            res.body["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_string(),
        )
    }

    /// Creates a tenant through the CLI (as an operator would).
    pub fn add_tenant(&self, name: &str) {
        crate::support::ok_stdout(&self.data.cli(&["tenant", "add", name]));
    }

    /// Creates a user through the CLI with [`PASSWORD`] and logs them in.
    pub fn add_user(&self, tenant: &str, email: &str, role: &str) -> String {
        let mut child = std::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(self.data.path())
            .args([
                "user", "add", "--tenant", tenant, "--email", email, "--role", role,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        use std::io::Write as _;
        writeln!(child.stdin.take().expect("stdin"), "{PASSWORD}").expect("write password");
        crate::support::ok_stdout(&child.wait_with_output().expect("wait"));
        self.login(email, PASSWORD).0
    }

    /// Creates a customer and returns its JSON.
    pub fn customer(&self, token: &str, name: &str) -> Value {
        self.post(token, "/api/v1/customers", json!({"name": name}))
            .expect(201)
            .body
    }
}
