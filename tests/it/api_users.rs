//! `/api/v1/users` against the real daemon: who may create and change whom,
//! deactivation that bites at once, tenant isolation, no password hash in
//! any answer; and `run --demo`, seeded once however often it starts.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::api_support::{Crm, PASSWORD, Resp};
use crate::support::{DataDir, sql};

/// Fails when a response carries anything that looks like a password hash.
#[track_caller]
fn no_hash(resp: Resp) -> Resp {
    let text = resp.body.to_string();
    assert!(
        !text.contains("password_hash") && !text.contains("$argon2"),
        "a password hash leaked: {text}"
    );
    resp
}

fn etag_of(crm: &Crm, token: &str, path: &str) -> String {
    crm.get(token, path).expect(200).header("etag").to_string()
}

fn refresh(crm: &Crm, token: &str) -> Resp {
    crm.request(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": token})),
        &[],
    )
}

#[test]
fn owners_and_admins_manage_users_within_the_role_rules() {
    let crm = Crm::start();
    let owner = crm.owner.clone();
    let owner_id = crm.get(&owner, "/api/v1/auth/me").expect(200).body["id"]
        .as_str()
        .expect("id")
        .to_string();

    // An owner creates an admin with a password: no password comes back.
    let admin = no_hash(
        crm.post(
            &owner,
            "/api/v1/users",
            json!({"email": "Admin@X.org", "name": "Ada Admin", "role": "admin", "password": PASSWORD}),
        )
        .expect(201),
    );
    assert_eq!(admin.body["email"], "admin@x.org", "stored lower-case");
    assert_eq!(admin.body["role"], "admin");
    assert!(
        admin.body.get("initial_password").is_none(),
        "{}",
        admin.body
    );
    assert_eq!(admin.header("etag"), "\"1\"");
    assert_eq!(
        admin.header("location"),
        format!("/api/v1/users/{}", admin.body["id"].as_str().expect("id"))
    );
    let (admin_token, _) = crm.login("admin@x.org", PASSWORD);

    // An admin creates an agent without one: a one-time password, once.
    let agent = no_hash(
        crm.post(
            &admin_token,
            "/api/v1/users",
            json!({"email": "agent@x.org", "name": "Alex Agent", "role": "agent"}),
        )
        .expect(201),
    );
    let initial = agent.body["initial_password"]
        .as_str()
        .expect("initial_password");
    assert!(initial.len() >= 12, "{initial}");
    let agent_path = format!("/api/v1/users/{}", agent.body["id"].as_str().expect("id"));
    let read = no_hash(crm.get(&admin_token, &agent_path).expect(200));
    assert!(
        read.body.get("initial_password").is_none(),
        "shown once only"
    );
    let (agent_token, _) = crm.login("agent@x.org", initial);

    // What an admin may not do: make an owner, or touch one.
    crm.post(
        &admin_token,
        "/api/v1/users",
        json!({"email": "boss@x.org", "name": "Boss", "role": "owner"}),
    )
    .expect_problem(403, "forbidden");
    let owner_path = format!("/api/v1/users/{owner_id}");
    let owner_etag = etag_of(&crm, &admin_token, &owner_path);
    crm.patch(
        &admin_token,
        &owner_path,
        &owner_etag,
        json!({"name": "Renamed"}),
    )
    .expect_problem(403, "forbidden");
    crm.patch(
        &admin_token,
        &owner_path,
        &owner_etag,
        json!({"active": false}),
    )
    .expect_problem(403, "forbidden");
    crm.patch(&admin_token, &agent_path, "\"1\"", json!({"role": "owner"}))
        .expect_problem(403, "forbidden");
    // …but may manage agents, with optimistic concurrency.
    crm.request(
        Method::PATCH,
        &agent_path,
        Some(&admin_token),
        Some(json!({"role": "viewer"})),
        &[],
    )
    .expect_problem(428, "if-match-required");
    let changed = no_hash(
        crm.patch(
            &admin_token,
            &agent_path,
            "\"1\"",
            json!({"role": "viewer", "name": "Alex Viewer"}),
        )
        .expect(200),
    );
    assert_eq!(changed.body["role"], "viewer");
    assert_eq!(changed.body["name"], "Alex Viewer");
    assert_eq!(changed.header("etag"), "\"2\"");
    crm.patch(&admin_token, &agent_path, "\"1\"", json!({"role": "agent"}))
        .expect_problem(412, "stale-write");
    // The demotion holds at once for the token issued before it.
    crm.post(&agent_token, "/api/v1/customers", json!({"name": "x"}))
        .expect_problem(403, "forbidden");

    // Nobody demotes or deactivates themselves.
    let admin_path = format!("/api/v1/users/{}", admin.body["id"].as_str().expect("id"));
    crm.patch(&admin_token, &admin_path, "\"1\"", json!({"role": "agent"}))
        .expect_problem(403, "forbidden");
    crm.patch(&admin_token, &admin_path, "\"1\"", json!({"active": false}))
        .expect_problem(403, "forbidden");
    crm.patch(
        &admin_token,
        &admin_path,
        "\"1\"",
        json!({"name": "Ada A."}),
    )
    .expect(200);

    // The last active owner stays one, even when asking for it themselves.
    let owner_etag = etag_of(&crm, &owner, &owner_path);
    crm.patch(&owner, &owner_path, &owner_etag, json!({"role": "admin"}))
        .expect_problem(409, "conflict");
    crm.patch(&owner, &owner_path, &owner_etag, json!({"active": false}))
        .expect_problem(409, "conflict");
    // With a second owner, the first still may not demote themselves, but
    // the second may demote the first; the demoted one then may not touch
    // the remaining owner.
    let second = crm
        .post(
            &owner,
            "/api/v1/users",
            json!({"email": "owner2@x.org", "name": "Second Owner", "role": "owner", "password": PASSWORD}),
        )
        .expect(201)
        .body;
    let (second_token, _) = crm.login("owner2@x.org", PASSWORD);
    crm.patch(&owner, &owner_path, &owner_etag, json!({"role": "admin"}))
        .expect_problem(403, "forbidden");
    let demoted = crm
        .patch(
            &second_token,
            &owner_path,
            &owner_etag,
            json!({"role": "admin"}),
        )
        .expect(200);
    assert_eq!(demoted.body["role"], "admin");
    let second_path = format!("/api/v1/users/{}", second["id"].as_str().expect("id"));
    crm.patch(&owner, &second_path, "\"1\"", json!({"active": false}))
        .expect_problem(403, "forbidden");

    // Agents and viewers do not manage users or even list them.
    let viewer = crm.add_user("default", "viewer@x.org", "viewer");
    for token in [&agent_token, &viewer] {
        crm.get(token, "/api/v1/users")
            .expect_problem(403, "forbidden");
        crm.get(token, &admin_path).expect_problem(403, "forbidden");
        crm.post(
            token,
            "/api/v1/users",
            json!({"email": "z@x.org", "name": "Z", "role": "viewer"}),
        )
        .expect_problem(403, "forbidden");
    }

    // Bad input is a named 4xx.
    for (body, field) in [
        (
            json!({"email": "q@x.org", "name": "Q", "role": "superuser"}),
            "role",
        ),
        (
            json!({"email": "not-an-email", "name": "Q", "role": "viewer"}),
            "email",
        ),
        (
            json!({"email": "q@x.org", "name": "", "role": "viewer"}),
            "name",
        ),
        (
            json!({"email": "q@x.org", "name": "Q", "role": "viewer", "password": "short"}),
            "password",
        ),
        (
            json!({"email": "q@x.org", "name": "Q", "role": "viewer", "password": "p".repeat(1025)}),
            "password",
        ),
    ] {
        let problem = crm
            .post(&second_token, "/api/v1/users", body)
            .expect_problem(422, "validation");
        assert_eq!(problem.body["field"], field, "{}", problem.body);
    }
    crm.post(
        &second_token,
        "/api/v1/users",
        json!({"email": "q@x.org", "name": "Q", "role": "viewer", "password_hash": "$argon2id$…"}),
    )
    .expect_problem(422, "validation");
    crm.patch(
        &second_token,
        &agent_path,
        "\"2\"",
        json!({"email": "new@x.org"}),
    )
    .expect_problem(422, "validation");
    crm.post(
        &second_token,
        "/api/v1/users",
        json!({"email": "AGENT@x.org", "name": "Dup", "role": "viewer"}),
    )
    .expect_problem(409, "conflict");

    // The list: search, the active filter, paging; never a hash.
    let all = no_hash(
        crm.get(&second_token, "/api/v1/users?limit=200")
            .expect(200),
    );
    assert_eq!(all.body["items"].as_array().expect("items").len(), 5);
    let found = crm
        .get(&second_token, "/api/v1/users?q=ALEX")
        .expect(200)
        .body;
    assert_eq!(found["items"].as_array().expect("items").len(), 1);
    assert_eq!(found["items"][0]["email"], "agent@x.org");
    let mut seen = Vec::new();
    let mut path = "/api/v1/users?limit=2".to_string();
    loop {
        let page = no_hash(crm.get(&second_token, &path).expect(200)).body;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["id"].clone());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/users?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    seen.dedup();
    assert_eq!(seen.len(), 5, "each user exactly once");

    // The audit log has each change with who made it, and no hash either.
    let audit = no_hash(
        crm.get(
            &second_token,
            &format!(
                "/api/v1/audit?entity_id={}",
                agent.body["id"].as_str().expect("id")
            ),
        )
        .expect(200),
    );
    let events = audit.body["items"].as_array().expect("items");
    assert_eq!(events.len(), 2, "{}", audit.body);
    assert_eq!(events[0]["before"]["role"], "agent");
    assert_eq!(events[0]["after"]["role"], "viewer");
    assert_eq!(events[0]["actor_id"], admin.body["id"]);
}

#[test]
fn deactivation_ends_access_at_once_and_lists_stay_in_their_tenant() {
    let crm = Crm::start();
    let owner = crm.owner.clone();
    crm.post(
        &owner,
        "/api/v1/users",
        json!({"email": "leaver@x.org", "name": "Lee Leaver", "role": "agent", "password": PASSWORD}),
    )
    .expect(201);
    let (access, refresh_token) = crm.login("leaver@x.org", PASSWORD);
    crm.get(&access, "/api/v1/customers").expect(200);
    let id = crm.get(&owner, "/api/v1/users?q=leaver").expect(200).body["items"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = format!("/api/v1/users/{id}");

    let off = crm
        .patch(&owner, &path, "\"1\"", json!({"active": false}))
        .expect(200);
    assert_eq!(off.body["active"], false);
    // The access token is still unexpired and correctly signed, yet refused.
    crm.get(&access, "/api/v1/customers")
        .expect_problem(401, "unauthenticated");
    crm.get(&access, "/api/v1/auth/me")
        .expect_problem(401, "unauthenticated");
    refresh(&crm, &refresh_token).expect_problem(401, "unauthenticated");
    crm.request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"email": "leaver@x.org", "password": PASSWORD})),
        &[],
    )
    .expect_problem(401, "bad-credentials");
    let inactive = crm
        .get(&owner, "/api/v1/users?active=false")
        .expect(200)
        .body;
    assert_eq!(inactive["items"].as_array().expect("items").len(), 1);
    assert_eq!(inactive["items"][0]["id"], json!(id));
    let active = crm
        .get(&owner, "/api/v1/users?active=true")
        .expect(200)
        .body;
    assert!(
        active["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|u| u["id"] != json!(id))
    );

    // Reactivated: a fresh login works; the old session stays dead. (The
    // refused login above counted a failure, which bumped the version.)
    let etag = etag_of(&crm, &owner, &path);
    crm.patch(&owner, &path, &etag, json!({"active": true}))
        .expect(200);
    refresh(&crm, &refresh_token).expect_problem(401, "unauthenticated");
    let (again, _) = crm.login("leaver@x.org", PASSWORD);
    crm.get(&again, "/api/v1/customers").expect(200);

    // Another tenant's owner sees only their own users, by any route.
    crm.add_tenant("other");
    let intruder = crm.add_user("other", "intruder@other.org", "owner");
    let theirs = no_hash(crm.get(&intruder, "/api/v1/users?limit=200").expect(200)).body;
    let emails: Vec<&str> = theirs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|u| u["email"].as_str().expect("email"))
        .collect();
    assert_eq!(emails, ["intruder@other.org"]);
    let searched = crm
        .get(&intruder, "/api/v1/users?q=leaver")
        .expect(200)
        .body;
    assert_eq!(searched["items"], json!([]));
    crm.get(&intruder, &path).expect_problem(404, "not-found");
    // With the current ETag, so only tenancy can explain the refusal.
    let current = etag_of(&crm, &owner, &path);
    crm.patch(&intruder, &path, &current, json!({"active": false}))
        .expect_problem(404, "not-found");
    assert_eq!(
        crm.get(&owner, &path).expect(200).body["active"],
        true,
        "untouched"
    );
    // Emails are unique across tenants (login needs only the email), so
    // this much is visible: the address is taken.
    crm.post(
        &intruder,
        "/api/v1/users",
        json!({"email": "leaver@x.org", "name": "Copycat", "role": "viewer"}),
    )
    .expect_problem(409, "conflict");
}

/// Customers in one tenant, counted by paging through the API (active and
/// archived), with their ids.
fn all_customers(crm: &Crm, token: &str) -> Vec<Value> {
    let mut ids = Vec::new();
    for archived in [false, true] {
        let mut path = format!("/api/v1/customers?limit=200&archived={archived}");
        loop {
            let page = crm.get(token, &path).expect(200).body;
            ids.extend(
                page["items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .map(|c| c["id"].clone()),
            );
            match page["next_cursor"].as_str() {
                Some(cursor) => {
                    path =
                        format!("/api/v1/customers?limit=200&archived={archived}&cursor={cursor}");
                }
                None => break,
            }
        }
    }
    ids
}

const COUNTS: &str = "SELECT (SELECT count(*) FROM tenancy.tenants) || ' ' || \
     (SELECT count(*) FROM iam.users) || ' ' || \
     (SELECT count(*) FROM customers.customers) || ' ' || \
     (SELECT count(*) FROM customers.contacts) || ' ' || \
     (SELECT count(*) FROM sales.deals) || ' ' || \
     (SELECT count(*) FROM activities.activities) || ' ' || \
     (SELECT count(*) FROM payments.payments)";

#[test]
fn demo_data_is_seeded_once_and_serves_each_tenant_its_own() {
    let data = DataDir::new();
    let mut daemon = data.spawn(&["--demo"]);
    daemon.wait_ready(Duration::from_secs(60));
    let text = std::fs::read_to_string(data.path().join("secrets/demo-users.txt"))
        .expect("the demo users' file");
    let password = text
        .split_whitespace()
        .skip_while(|w| *w != "password")
        .nth(1)
        .expect("password in file")
        .to_string();
    for email in ["owner", "admin", "agent", "viewer"].iter().flat_map(|r| {
        [
            format!("{r}@andes.example"),
            format!("{r}@pacifico.example"),
        ]
    }) {
        assert!(text.contains(&email), "{email} missing from:\n{text}");
    }
    let crm = Crm::attach(data, daemon);

    let (viewer, _) = crm.login("viewer@andes.example", &password);
    let andes = all_customers(&crm, &viewer);
    assert_eq!(andes.len(), 2000, "every customer once, across pages");
    let (agent, _) = crm.login("agent@pacifico.example", &password);
    let pacifico = all_customers(&crm, &agent);
    assert_eq!(pacifico.len(), 2000);
    assert!(
        pacifico.iter().all(|id| !andes.contains(id)),
        "tenants share no customer"
    );
    let users = crm.get(&viewer, "/api/v1/users").status;
    assert_eq!(users, 403, "a demo viewer is a real viewer");
    let (admin, _) = crm.login("admin@andes.example", &password);
    let team = no_hash(crm.get(&admin, "/api/v1/users").expect(200)).body;
    assert_eq!(team["items"].as_array().expect("items").len(), 4);

    // Shape of the rest, per tenant: contacts 1–3 per customer, the five
    // currencies, payments in several states.
    let shape = sql(
        &crm.data,
        "SELECT t.name || ':' || \
           (SELECT count(*) FROM customers.contacts c WHERE c.tenant_id = t.id) || ':' || \
           (SELECT count(*) FROM sales.deals d WHERE d.tenant_id = t.id) || ':' || \
           (SELECT count(*) FROM activities.activities a WHERE a.tenant_id = t.id) || ':' || \
           (SELECT count(*) FROM payments.payments p WHERE p.tenant_id = t.id) || ':' || \
           (SELECT count(DISTINCT status) FROM payments.payments p WHERE p.tenant_id = t.id) \
         FROM tenancy.tenants t WHERE t.name LIKE 'Demo %' ORDER BY t.name",
    );
    for line in shape.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let n = |i: usize| fields[i].parse::<u32>().expect("count");
        assert!((2000..=6000).contains(&n(1)), "contacts: {line}");
        assert_eq!((n(2), n(3), n(4)), (1500, 3000, 1500), "{line}");
        assert_eq!(n(5), 5, "payment statuses: {line}");
    }
    assert_eq!(shape.lines().count(), 2, "{shape}");
    assert_eq!(
        sql(
            &crm.data,
            "SELECT string_agg(DISTINCT currency, ',' ORDER BY currency) FROM sales.deals"
        ),
        "CLP,COP,MXN,PEN,USD"
    );
    let before = sql(&crm.data, COUNTS);

    // A second start with --demo adds nothing and shows no new password.
    let Crm { data, daemon, .. } = crm;
    assert!(daemon.stop().success());
    let mut daemon = data.spawn(&["--demo"]);
    daemon.wait_ready(Duration::from_secs(60));
    assert!(
        daemon.log().contains("demo data already present"),
        "{}",
        daemon.log()
    );
    assert_eq!(sql(&data, COUNTS), before);
    assert_eq!(
        std::fs::read_to_string(data.path().join("secrets/demo-users.txt")).expect("file"),
        text,
        "the password is not replaced"
    );
    drop(daemon);
}

#[test]
fn versions_change_only_when_the_row_does() {
    let crm = Crm::start();
    let agent = crm.add_user("default", "typo@x.org", "agent");
    let me = crm.get(&agent, "/api/v1/auth/me").expect(200).body;
    let path = format!("/api/v1/users/{}", me["id"].as_str().expect("id"));
    let before = etag_of(&crm, &crm.owner, &path);

    // Someone mistypes this user's password: the lockout counter moves, the
    // user (as an admin sees and edits it) does not.
    crm.request(
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"email": "typo@x.org", "password": "wrong password"})),
        &[],
    )
    .expect_problem(401, "bad-credentials");
    assert_eq!(etag_of(&crm, &crm.owner, &path), before);
    crm.patch(&crm.owner, &path, &before, json!({"name": "Still fresh"}))
        .expect(200);

    // An update that changes nothing keeps the version (and the ETag valid).
    let customer = crm
        .post(&crm.owner, "/api/v1/customers", json!({"name": "Same"}))
        .expect(201);
    let customer_path = format!(
        "/api/v1/customers/{}",
        customer.body["id"].as_str().expect("id")
    );
    let etag = customer.header("etag").to_string();
    let unchanged = crm
        .patch(&crm.owner, &customer_path, &etag, json!({"name": "Same"}))
        .expect(200);
    assert_eq!(unchanged.header("etag"), etag);
    let changed = crm
        .patch(&crm.owner, &customer_path, &etag, json!({"name": "Other"}))
        .expect(200);
    assert_ne!(changed.header("etag"), etag);
}
