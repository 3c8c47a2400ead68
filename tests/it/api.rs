//! The CRM API against the real daemon and database: authentication, roles,
//! tenant isolation, optimistic concurrency, audit, and bad input.

use reqwest::Method;
use serde_json::{Value, json};

use crate::api_support::{Crm, PASSWORD};

#[test]
fn login_refresh_rotation_reuse_detection_and_logout() {
    let crm = Crm::start();
    crm.request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"email": "owner@pagodirecto.local", "password": "wrong password!"})),
        &[],
    )
    .expect_problem(401, "bad-credentials");
    crm.request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"email": "nobody@x.org", "password": "wrong password!"})),
        &[],
    )
    .expect_problem(401, "bad-credentials");

    let token = crm.add_user("default", "agent@x.org", "agent");
    let me = crm.get(&token, "/api/v1/auth/me").expect(200);
    assert_eq!(me.body["email"], "agent@x.org");
    assert_eq!(me.body["role"], "agent");
    assert_eq!(me.body["tenant_name"], "default");

    let (_, first) = crm.login("agent@x.org", PASSWORD);
    let refresh = |t: &str| {
        crm.request(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": t})),
            &[],
        )
    };
    let second = refresh(&first).expect(200).body["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_string();
    assert_ne!(first, second);
    let third = refresh(&second).expect(200).body;
    assert!(
        crm.get(
            third["access_token"].as_str().expect("access"),
            "/api/v1/auth/me"
        )
        .status
            == 200
    );
    // Reusing a spent token revokes the whole family: the newest token dies too.
    refresh(&first).expect_problem(401, "unauthenticated");
    refresh(third["refresh_token"].as_str().expect("refresh"))
        .expect_problem(401, "unauthenticated");

    let (_, other) = crm.login("agent@x.org", PASSWORD);
    crm.request(
        Method::POST,
        "/api/v1/auth/logout",
        None,
        Some(json!({"refresh_token": other})),
        &[],
    )
    .expect(204);
    refresh(&other).expect_problem(401, "unauthenticated");
}

#[test]
fn repeated_failures_lock_the_account_and_a_reset_unlocks_it() {
    let crm = Crm::start();
    crm.add_user("default", "target@x.org", "viewer");
    for _ in 0..5 {
        crm.request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "target@x.org", "password": "not the password"})),
            &[],
        )
        .expect_problem(401, "bad-credentials");
    }
    // Locked: even the right password is refused, with Retry-After.
    let locked = crm
        .request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "TARGET@x.org", "password": PASSWORD})),
            &[],
        )
        .expect_problem(429, "too-many-requests");
    assert!(
        locked
            .header("retry-after")
            .parse::<u64>()
            .expect("retry-after")
            > 0
    );

    let mut child = std::process::Command::new(crate::support::BIN)
        .arg("--data-dir")
        .arg(crm.data.path())
        .args(["user", "reset-password", "--email", "target@x.org"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write as _;
    writeln!(child.stdin.take().expect("stdin"), "a brand new password").expect("write");
    crate::support::ok_stdout(&child.wait_with_output().expect("wait"));
    crm.login("target@x.org", "a brand new password");
}

#[test]
fn too_many_failures_from_one_address_are_throttled() {
    let crm = Crm::start();
    for i in 0..20 {
        let email = format!("nobody{i}@x.org");
        crm.request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": email, "password": "whatever it is"})),
            &[],
        )
        .expect_problem(401, "bad-credentials");
    }
    crm.request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"email": "owner@pagodirecto.local", "password": "whatever it is"})),
        &[],
    )
    .expect_problem(429, "too-many-requests");
}

#[test]
fn tampered_expired_and_foreign_tokens_are_refused() {
    let crm = Crm::start();
    crm.get(&crm.owner, "/api/v1/customers").expect(200);
    crm.request(Method::GET, "/api/v1/customers", None, None, &[])
        .expect_problem(401, "unauthenticated");
    crm.get("not-a-jwt", "/api/v1/customers")
        .expect_problem(401, "unauthenticated");

    // Change the payload (claim another tenant) without re-signing.
    let parts: Vec<&str> = crm.owner.split('.').collect();
    let mut claims = decode_part(parts[1]);
    claims["tid"] = json!(uuid::Uuid::new_v4());
    let forged = format!("{}.{}.{}", parts[0], encode_part(&claims), parts[2]);
    crm.get(&forged, "/api/v1/customers")
        .expect_problem(401, "unauthenticated");

    // Signed with the daemon's real key, but expired.
    let keys: Value = serde_json::from_str(
        &std::fs::read_to_string(crm.data.path().join("secrets/jwt-keys.json")).expect("keys"),
    )
    .expect("json");
    let key = &keys[0];
    let secret = hex::decode(key["secret"].as_str().expect("secret")).expect("hex");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key["kid"].as_str().expect("kid").to_string());
    let mut expired = decode_part(parts[1]);
    expired["exp"] = json!(1_000_000_000);
    expired["iat"] = json!(999_999_000);
    let token = jsonwebtoken::encode(
        &header,
        &expired,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .expect("sign");
    crm.get(&token, "/api/v1/customers")
        .expect_problem(401, "unauthenticated");

    // Valid claims, signed with a key the daemon does not have.
    let token = jsonwebtoken::encode(
        &header,
        &decode_part(parts[1]),
        &jsonwebtoken::EncodingKey::from_secret(b"someone else's key material!!!!"),
    )
    .expect("sign");
    crm.get(&token, "/api/v1/customers")
        .expect_problem(401, "unauthenticated");

    // "alg": "none" is never accepted.
    let none = format!(
        "{}.{}.",
        encode_part(&json!({"alg": "none", "typ": "JWT", "kid": key["kid"]})),
        parts[1]
    );
    crm.get(&none, "/api/v1/customers")
        .expect_problem(401, "unauthenticated");
}

fn decode_part(part: &str) -> Value {
    use base64_url as b64;
    serde_json::from_slice(&b64::decode(part)).expect("json part")
}

fn encode_part(value: &Value) -> String {
    base64_url::encode(&serde_json::to_vec(value).expect("json"))
}

/// Minimal base64url (no padding), so tests need no extra dependency.
mod base64_url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    pub fn decode(text: &str) -> Vec<u8> {
        let values: Vec<u32> = text
            .bytes()
            .map(|c| ALPHABET.iter().position(|a| *a == c).expect("base64url") as u32)
            .collect();
        let mut out = Vec::new();
        for chunk in values.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, v)| acc | v << (18 - 6 * i));
            for i in 0..chunk.len() - 1 {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}

#[test]
fn each_role_gets_exactly_its_permissions() {
    let crm = Crm::start();
    let viewer = crm.add_user("default", "viewer@x.org", "viewer");
    let agent = crm.add_user("default", "agent@x.org", "agent");
    let admin = crm.add_user("default", "admin@x.org", "admin");

    let customer = crm.customer(&agent, "Made by an agent");
    let path = format!("/api/v1/customers/{}", customer["id"].as_str().expect("id"));
    crm.get(&viewer, &path).expect(200);
    crm.get(&viewer, "/api/v1/customers").expect(200);
    crm.post(&viewer, "/api/v1/customers", json!({"name": "x"}))
        .expect_problem(403, "forbidden");
    crm.patch(&viewer, &path, "\"1\"", json!({"name": "y"}))
        .expect_problem(403, "forbidden");
    crm.request(
        Method::POST,
        &format!("{path}/archive"),
        Some(&viewer),
        None,
        &[("if-match", "\"1\"")],
    )
    .expect_problem(403, "forbidden");

    crm.patch(&agent, &path, "\"1\"", json!({"name": "Renamed"}))
        .expect(200);
    crm.get(&agent, "/api/v1/audit")
        .expect_problem(403, "forbidden");
    crm.get(&viewer, "/api/v1/audit")
        .expect_problem(403, "forbidden");
    crm.get(&admin, "/api/v1/audit").expect(200);
    crm.get(&crm.owner, "/api/v1/audit").expect(200);
    crm.request(
        Method::POST,
        &format!("{path}/archive"),
        Some(&agent),
        None,
        &[("if-match", "\"2\"")],
    )
    .expect(200);
}

#[test]
fn one_tenant_can_never_reach_another_tenants_rows() {
    let crm = Crm::start();
    crm.add_tenant("other");
    let intruder = crm.add_user("other", "intruder@other.org", "owner");
    let secret = crm.customer(&crm.owner, "Secret Customer of default");
    let id = secret["id"].as_str().expect("id");
    let path = format!("/api/v1/customers/{id}");

    crm.get(&intruder, &path).expect_problem(404, "not-found");
    crm.patch(&intruder, &path, "\"1\"", json!({"name": "pwned"}))
        .expect_problem(404, "not-found");
    crm.request(
        Method::POST,
        &format!("{path}/archive"),
        Some(&intruder),
        None,
        &[("if-match", "\"1\"")],
    )
    .expect_problem(404, "not-found");
    let list = crm.get(&intruder, "/api/v1/customers?q=Secret").expect(200);
    assert_eq!(
        list.body["items"],
        json!([]),
        "search does not cross tenants"
    );
    let list = crm
        .get(&intruder, "/api/v1/customers?limit=200")
        .expect(200);
    assert_eq!(list.body["items"], json!([]));
    let audit = crm
        .get(&intruder, &format!("/api/v1/audit?entity_id={id}"))
        .expect(200);
    assert_eq!(
        audit.body["items"],
        json!([]),
        "audit does not cross tenants"
    );

    // The owner's view is untouched.
    let mine = crm.get(&crm.owner, &path).expect(200);
    assert_eq!(mine.body["name"], "Secret Customer of default");
    assert_eq!(mine.body["version"], 1);

    // Even a handler that forgot to scope its transaction sees nothing: the
    // application role with no tenant set reads zero rows.
    let app_view = crate::support::sql(
        &crm.data,
        "SET ROLE pagodirecto_app; SELECT count(*) FROM customers.customers; ",
    );
    assert_eq!(app_view.lines().last(), Some("0"), "{app_view}");
}

#[test]
fn stale_writes_are_refused_with_412_and_unconditional_ones_with_428() {
    let crm = Crm::start();
    let customer = crm.customer(&crm.owner, "Versioned");
    let path = format!("/api/v1/customers/{}", customer["id"].as_str().expect("id"));
    let read = crm.get(&crm.owner, &path).expect(200);
    let etag = read.header("etag").to_string();
    assert_eq!(etag, "\"1\"");

    crm.request(
        Method::PATCH,
        &path,
        Some(&crm.owner),
        Some(json!({"name": "No If-Match"})),
        &[],
    )
    .expect_problem(428, "if-match-required");
    let updated = crm
        .patch(
            &crm.owner,
            &path,
            &etag,
            json!({"name": "First writer", "email": "a@b.co"}),
        )
        .expect(200);
    assert_eq!(updated.header("etag"), "\"2\"");
    assert_eq!(updated.body["email"], "a@b.co");
    crm.patch(&crm.owner, &path, &etag, json!({"name": "Second writer"}))
        .expect_problem(412, "stale-write");
    let cleared = crm
        .patch(&crm.owner, &path, "\"2\"", json!({"email": null}))
        .expect(200);
    assert_eq!(cleared.body["email"], Value::Null, "null clears");
    assert_eq!(cleared.body["name"], "First writer", "absent keeps");
}

#[test]
fn every_write_is_audited_with_who_and_before_after() {
    let crm = Crm::start();
    let agent = crm.add_user("default", "agent@x.org", "agent");
    let me = crm.get(&agent, "/api/v1/auth/me").expect(200).body;
    let customer = crm.customer(&agent, "Audited");
    let id = customer["id"].as_str().expect("id");
    let path = format!("/api/v1/customers/{id}");
    crm.patch(&agent, &path, "\"1\"", json!({"name": "Audited twice"}))
        .expect(200);
    crm.request(
        Method::POST,
        &format!("{path}/archive"),
        Some(&agent),
        None,
        &[("if-match", "\"2\"")],
    )
    .expect(200);

    let events = crm
        .get(&crm.owner, &format!("/api/v1/audit?entity_id={id}"))
        .expect(200)
        .body;
    let items = events["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{events}");
    let (archive, update, create) = (&items[0], &items[1], &items[2]);
    assert_eq!(create["action"], "create");
    assert_eq!(create["before"], Value::Null);
    assert_eq!(create["after"]["name"], "Audited");
    assert_eq!(update["before"]["name"], "Audited");
    assert_eq!(update["after"]["name"], "Audited twice");
    assert!(archive["after"]["archived_at"].is_string());
    for event in items {
        assert_eq!(event["actor_id"], me["id"]);
        assert_eq!(event["entity"], "customers.customers");
    }
    // The API role cannot change history.
    let out = crm.data.cli(&[
        "psql",
        "--",
        "-X",
        "-c",
        "SET ROLE pagodirecto_app; DELETE FROM audit.events",
    ]);
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{out:?}"
    );
    assert_eq!(
        crate::support::sql(
            &crm.data,
            &format!("SELECT count(*) FROM audit.events WHERE entity_id = '{id}'")
        ),
        "3"
    );
}

#[test]
fn bad_input_is_always_a_4xx_problem_never_a_500() {
    let crm = Crm::start();
    let t = crm.owner.as_str();
    let raw = |method: Method, path: &str, body: &str, content_type: &str| {
        let res = crm
            .http
            .request(method, format!("{}{path}", crm.base))
            .bearer_auth(t)
            .header("content-type", content_type)
            // A refused oversized body makes the server close the connection;
            // don't let the next case inherit it from the client's pool.
            .header("connection", "close")
            .body(body.to_string())
            .send()
            .expect("send");
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let body: Value = serde_json::from_str(&res.text().expect("text")).unwrap_or(Value::Null);
        (status, ct, body)
    };
    let cases: Vec<(Method, &str, String, &str, u16, &str)> = vec![
        (
            Method::POST,
            "/api/v1/customers",
            "{\"name\": ".into(),
            "application/json",
            400,
            "malformed-body",
        ),
        (
            Method::POST,
            "/api/v1/customers",
            "{\"name\": 42}".into(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::POST,
            "/api/v1/customers",
            "{\"name\": \"x\", \"admin\": true}".into(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::POST,
            "/api/v1/customers",
            "{\"name\": \"\"}".into(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::POST,
            "/api/v1/customers",
            format!("{{\"name\": \"{}\"}}", "n".repeat(201)),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::POST,
            "/api/v1/customers",
            "{\"name\": \"x\", \"email\": \"not an email\"}".into(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::POST,
            "/api/v1/customers",
            "{\"name\": \"x\\u0000y\"}".into(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::POST,
            "/api/v1/customers",
            "name=x".into(),
            "application/x-www-form-urlencoded",
            415,
            "unsupported-media-type",
        ),
        (
            Method::POST,
            "/api/v1/customers",
            format!("{{\"name\": \"{}\"}}", "n".repeat(2 * 1024 * 1024)),
            "application/json",
            413,
            "payload-too-large",
        ),
        (
            Method::GET,
            "/api/v1/customers/not-a-uuid",
            String::new(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::GET,
            "/api/v1/customers?limit=100000",
            String::new(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::GET,
            "/api/v1/customers?limit=abc",
            String::new(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::GET,
            "/api/v1/customers?cursor=garbage",
            String::new(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::GET,
            "/api/v1/customers?colour=red",
            String::new(),
            "application/json",
            422,
            "validation",
        ),
        (
            Method::GET,
            "/api/v1/customers/00000000-0000-0000-0000-000000000000",
            String::new(),
            "application/json",
            404,
            "not-found",
        ),
    ];
    for (method, path, body, content_type, status, kind) in cases {
        let (got, ct, problem) = raw(method.clone(), path, &body, content_type);
        let shown = if body.len() > 80 {
            format!("{}…", &body[..80])
        } else {
            body.clone()
        };
        assert_eq!(got, status, "{method} {path} {shown}: {problem}");
        assert_eq!(ct, "application/problem+json", "{method} {path} {shown}");
        assert_eq!(
            problem["type"],
            format!("/problems/{kind}"),
            "{method} {path} {shown}: {problem}"
        );
    }
    let named = raw(
        Method::POST,
        "/api/v1/customers",
        "{\"name\": 42}",
        "application/json",
    )
    .2;
    assert_eq!(named["field"], "name", "{named}");

    // SQL metacharacters are data, not code.
    for q in [
        "' OR 1=1 --",
        "%",
        "_",
        "\\",
        "'; DROP TABLE customers.customers; --",
    ] {
        let res = crm
            .request(
                Method::GET,
                &format!("/api/v1/customers?q={}", urlencode(q)),
                Some(t),
                None,
                &[],
            )
            .expect(200);
        assert_eq!(res.body["items"], json!([]), "{q}");
    }
    let stored = crm.customer(t, "O'Brien; DROP TABLE x; --");
    assert_eq!(stored["name"], "O'Brien; DROP TABLE x; --");
    let found = crm
        .get(t, &format!("/api/v1/customers?q={}", urlencode("O'Brien")))
        .expect(200);
    assert_eq!(found.body["items"][0]["id"], stored["id"]);
}

#[test]
fn lists_page_with_cursors_search_and_archive_filter() {
    let crm = Crm::start();
    let t = crm.owner.as_str();
    for i in 0..7 {
        crm.customer(t, &format!("Customer {i:02}"));
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/customers?limit=3".to_string();
    loop {
        let page = crm.get(t, &path).expect(200).body;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["name"].as_str().expect("name").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/customers?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("Customer {i:02}")).collect();
    assert_eq!(seen, expected, "newest first, each exactly once");

    let hit = crm
        .get(t, "/api/v1/customers?q=ustomer%2003")
        .expect(200)
        .body;
    assert_eq!(hit["items"].as_array().expect("items").len(), 1);
    let id = hit["items"][0]["id"].as_str().expect("id").to_string();
    crm.request(
        Method::POST,
        &format!("/api/v1/customers/{id}/archive"),
        Some(t),
        None,
        &[("if-match", "\"1\"")],
    )
    .expect(200);
    let active = crm.get(t, "/api/v1/customers?limit=200").expect(200).body;
    assert_eq!(active["items"].as_array().expect("items").len(), 6);
    let archived = crm
        .get(t, "/api/v1/customers?archived=true")
        .expect(200)
        .body;
    assert_eq!(archived["items"][0]["id"], json!(id));
}

#[test]
fn the_openapi_document_describes_the_api() {
    let crm = Crm::start();
    let doc = crm
        .request(Method::GET, "/openapi.json", None, None, &[])
        .expect(200)
        .body;
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/v1/auth/login",
        "/api/v1/customers",
        "/api/v1/customers/{id}",
        "/api/v1/audit",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn rotating_the_signing_key_keeps_existing_tokens_valid() {
    let crm = Crm::start();
    let before = crm.owner.clone();
    let kid = |token: &str| decode_part(token.split('.').next().expect("header"))["kid"].clone();
    crate::support::ok_stdout(&crm.data.cli(&["auth", "rotate-key"]));
    crm.get(&before, "/api/v1/auth/me").expect(200);
    let text =
        std::fs::read_to_string(crm.data.path().join("secrets/initial-owner.txt")).expect("file");
    let password = text
        .split_whitespace()
        .skip_while(|w| *w != "password")
        .nth(1)
        .expect("password")
        .to_string();
    let (after, _) = crm.login("owner@pagodirecto.local", &password);
    assert_ne!(kid(&after), kid(&before), "new tokens use the new key");
    crm.get(&after, "/api/v1/auth/me").expect(200);
    let keys: Value = serde_json::from_str(
        &std::fs::read_to_string(crm.data.path().join("secrets/jwt-keys.json")).expect("keys"),
    )
    .expect("json");
    assert_eq!(
        keys.as_array().expect("array").len(),
        2,
        "the old key is kept until its tokens expire"
    );
}

#[test]
fn audit_rows_older_than_keep_days_are_pruned_on_schedule() {
    use crate::support::{DataDir, sql};
    use std::time::{Duration, Instant};
    let data = DataDir::new();
    let mut daemon = data.spawn_env(
        &[],
        &[
            ("PAGODIRECTO_BACKUP__SCHEDULE", ""),
            ("PAGODIRECTO_AUDIT__KEEP_DAYS", "10"),
            ("PAGODIRECTO_AUDIT__PRUNE_SCHEDULE", "*/2 * * * * *"),
        ],
    );
    daemon.wait_ready(Duration::from_secs(60));
    for (entity, age) in [("test.old", "11 days"), ("test.recent", "9 days")] {
        sql(
            &data,
            &format!(
                "INSERT INTO audit.events (tenant_id, action, entity, entity_id, at) \
                 SELECT id, 'update', '{entity}', gen_random_uuid(), now() - interval '{age}' FROM tenancy.tenants"
            ),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql(
        &data,
        "SELECT count(*) FROM audit.events WHERE entity = 'test.old'",
    ) != "0"
    {
        assert!(Instant::now() < deadline, "not pruned: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        sql(
            &data,
            "SELECT count(*) FROM audit.events WHERE entity = 'test.recent'"
        ),
        "1"
    );
    assert!(
        daemon
            .log()
            .contains("audit log pruned: 1 rows older than 10 days deleted"),
        "{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
}
