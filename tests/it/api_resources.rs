//! Contacts, deals (and the pipeline), activities and payments against the
//! real daemon and database: the customers conventions (cursor lists,
//! ETag/If-Match, archive), references that must stay inside the tenant,
//! roles, payment status transitions, and bad input for the new field types.
//!
//! Each test starts one daemon and makes many assertions: a start costs
//! more than a hundred requests.

use reqwest::Method;
use serde_json::{Value, json};

use crate::api_support::{Crm, Resp};

fn id(value: &Value) -> String {
    value["id"].as_str().expect("id").to_string()
}

fn items(resp: &Resp) -> Vec<Value> {
    resp.body["items"].as_array().expect("items").clone()
}

fn ids(resp: &Resp) -> Vec<String> {
    items(resp).iter().map(id).collect()
}

/// A bad-input case: method, path, body, status, problem kind, and the
/// field the problem names when the API can name it.
type Case<'a> = (
    Method,
    &'a str,
    Option<Value>,
    u16,
    &'a str,
    Option<&'a str>,
);

fn archive(crm: &Crm, token: &str, path: &str, etag: &str) -> Resp {
    crm.request(
        Method::POST,
        &format!("{path}/archive"),
        Some(token),
        None,
        &[("if-match", etag)],
    )
}

/// The pipeline stages by name: name → id.
fn stages(crm: &Crm, token: &str) -> std::collections::HashMap<String, String> {
    items(&crm.get(token, "/api/v1/pipeline-stages").expect(200))
        .iter()
        .map(|s| (s["name"].as_str().expect("name").to_string(), id(s)))
        .collect()
}

/// Create → 201 with ETag "1" and a Location that reads back the same row;
/// PATCH needs If-Match (428), refuses a stale one (412), keeps absent
/// fields and clears nulled ones; archive needs If-Match too and moves the
/// row to the `archived=true` list.
#[track_caller]
fn check_lifecycle(
    crm: &Crm,
    collection: &str,
    create: &Value,
    change: &Value,
    kept: &str,
    cleared: &str,
) -> Value {
    let t = crm.owner.as_str();
    let made = crm.post(t, collection, create.clone()).expect(201);
    assert_eq!(made.header("etag"), "\"1\"", "{collection}");
    let path = made.header("location").to_string();
    assert_eq!(path, format!("{collection}/{}", id(&made.body)));
    let read = crm.get(t, &path).expect(200);
    assert_eq!(read.header("etag"), "\"1\"");
    assert_eq!(read.body, made.body, "{collection}: read back as created");
    assert!(
        !read.body[cleared].is_null(),
        "{collection}: {cleared} set on create"
    );

    crm.request(Method::PATCH, &path, Some(t), Some(change.clone()), &[])
        .expect_problem(428, "if-match-required");
    crm.patch(t, &path, "\"7\"", change.clone())
        .expect_problem(412, "stale-write");
    let mut nulled = change.clone();
    nulled[cleared] = Value::Null;
    let updated = crm.patch(t, &path, "\"1\"", nulled).expect(200);
    assert_eq!(updated.header("etag"), "\"2\"");
    assert_eq!(updated.body["version"], 2);
    for (field, value) in change.as_object().expect("object") {
        assert_eq!(&updated.body[field], value, "{collection}: {field} changed");
    }
    assert_eq!(
        updated.body[kept], made.body[kept],
        "{collection}: absent {kept} kept"
    );
    assert_eq!(
        updated.body[cleared],
        Value::Null,
        "{collection}: null clears {cleared}"
    );
    crm.patch(t, &path, "\"1\"", change.clone())
        .expect_problem(412, "stale-write");

    archive(crm, t, &path, "\"1\"").expect_problem(412, "stale-write");
    crm.request(Method::POST, &format!("{path}/archive"), Some(t), None, &[])
        .expect_problem(428, "if-match-required");
    let archived = archive(crm, t, &path, "\"2\"").expect(200);
    assert_eq!(archived.header("etag"), "\"3\"");
    assert!(archived.body["archived_at"].is_string());
    let active = crm.get(t, &format!("{collection}?limit=200")).expect(200);
    assert!(!ids(&active).contains(&id(&made.body)), "{collection}");
    let gone = crm
        .get(t, &format!("{collection}?archived=true"))
        .expect(200);
    assert_eq!(ids(&gone), [id(&made.body)], "{collection}");

    let audit = crm
        .get(t, &format!("/api/v1/audit?entity_id={}", id(&made.body)))
        .expect(200);
    let actions: Vec<Value> = items(&audit).iter().map(|e| e["action"].clone()).collect();
    assert_eq!(
        Value::from(actions),
        json!(["update", "update", "create"]),
        "{collection}: every write audited"
    );
    archived.body
}

#[test]
fn each_resource_creates_reads_updates_and_archives_with_etags() {
    let crm = Crm::start();
    let t = crm.owner.as_str();
    let customer = id(&crm.customer(t, "Acme"));

    let pipeline = crm.get(t, "/api/v1/pipeline-stages").expect(200);
    let names: Vec<(&str, &str, i64)> = pipeline.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name"),
                s["kind"].as_str().expect("kind"),
                s["position"].as_i64().expect("position"),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("Lead", "open", 0),
            ("Qualified", "open", 1),
            ("Proposal", "open", 2),
            ("Negotiation", "open", 3),
            ("Won", "won", 4),
            ("Lost", "lost", 5),
        ]
    );
    assert_eq!(pipeline.body["next_cursor"], Value::Null);
    let stage = stages(&crm, t);

    let contact = check_lifecycle(
        &crm,
        "/api/v1/contacts",
        &json!({"customer_id": customer, "name": "Ana Pérez", "email": "Ana@Acme.example", "title": "CFO"}),
        &json!({"name": "Ana Pérez Ruiz", "phone": "+34 600 000 000"}),
        "email",
        "title",
    );
    assert_eq!(
        contact["email"], "ana@acme.example",
        "emails are lower-cased"
    );
    assert_eq!(contact["customer_id"], json!(customer));

    let deal = check_lifecycle(
        &crm,
        "/api/v1/deals",
        &json!({"customer_id": customer, "title": "Annual plan", "amount_minor": 120_000,
               "currency": "EUR", "expected_close": "2030-02-28"}),
        &json!({"stage_id": stage["Proposal"], "amount_minor": 0, "currency": "USD"}),
        "title",
        "expected_close",
    );
    assert_eq!(deal["customer_id"], json!(customer));

    // A new deal starts in the first open stage; moving it is a PATCH.
    let fresh = crm
        .post(
            t,
            "/api/v1/deals",
            json!({"customer_id": customer, "title": "Upsell", "amount_minor": 5_00, "currency": "EUR",
                   "expected_close": "2030-12-31"}),
        )
        .expect(201)
        .body;
    assert_eq!(fresh["stage_id"], json!(stage["Lead"]));
    assert_eq!(fresh["expected_close"], "2030-12-31");
    assert_eq!(fresh["amount_minor"], 500);
    let path = format!("/api/v1/deals/{}", id(&fresh));
    let won = crm
        .patch(t, &path, "\"1\"", json!({"stage_id": stage["Won"]}))
        .expect(200);
    assert_eq!(won.body["stage_id"], json!(stage["Won"]));
    assert_eq!(won.body["title"], "Upsell");
    let board = crm
        .get(t, &format!("/api/v1/deals?stage_id={}", stage["Won"]))
        .expect(200);
    assert_eq!(ids(&board), [id(&fresh)]);

    let activity = check_lifecycle(
        &crm,
        "/api/v1/activities",
        &json!({"customer_id": customer, "deal_id": id(&fresh), "kind": "task", "subject": "Send the contract",
               "body": "Both copies", "due_at": "2030-01-31T09:00:00+01:00"}),
        &json!({"done": true, "kind": "call", "deal_id": null}),
        "subject",
        "due_at",
    );
    assert_eq!(activity["done"], true);
    assert_eq!(activity["body"], "Both copies");
    // Stored as the same instant, answered in UTC.
    let task = crm
        .post(
            t,
            "/api/v1/activities",
            json!({"customer_id": customer, "kind": "task", "subject": "Call back",
                   "due_at": "2030-01-31T09:00:00+01:00"}),
        )
        .expect(201)
        .body;
    assert_eq!(task["due_at"], "2030-01-31T08:00:00Z");
    assert_eq!(task["done"], false, "not done unless said");
    assert_eq!(task["deal_id"], Value::Null);
    let linked = crm
        .patch(
            t,
            &format!("/api/v1/activities/{}", id(&task)),
            "\"1\"",
            json!({"deal_id": id(&fresh)}),
        )
        .expect(200);
    assert_eq!(linked.body["deal_id"], json!(id(&fresh)));

    let payment = check_lifecycle(
        &crm,
        "/api/v1/payments",
        &json!({"customer_id": customer, "kind": "link", "description": "Invoice 2030-001",
               "amount_minor": 99_99, "currency": "EUR", "reference": "https://pay.example/abc"}),
        &json!({"description": "Invoice 2030-001 (resent)", "status": "paid"}),
        "amount_minor",
        "reference",
    );
    assert_eq!(payment["kind"], "link");
    assert_eq!(payment["currency"], "EUR");
    assert!(
        payment["paid_at"].is_string(),
        "paid_at set by the database"
    );
    assert_eq!(payment["next_statuses"], json!(["refunded"]));
    let recorded = crm
        .post(
            t,
            "/api/v1/payments",
            json!({"customer_id": customer, "kind": "record", "description": "Cash at the counter",
                   "amount_minor": 1, "currency": "EUR", "status": "paid"}),
        )
        .expect(201)
        .body;
    assert_eq!(recorded["status"], "paid");
    assert!(recorded["paid_at"].is_string());
    let pending = crm
        .post(
            t,
            "/api/v1/payments",
            json!({"customer_id": customer, "kind": "link", "description": "Deposit",
                   "amount_minor": 1_000_000_000_000_000_i64, "currency": "JPY"}),
        )
        .expect(201)
        .body;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["paid_at"], Value::Null);
    assert_eq!(pending["amount_minor"], 1_000_000_000_000_000_i64);
    assert_eq!(
        pending["next_statuses"],
        json!(["paid", "failed", "cancelled"])
    );

    let doc = crm
        .request(Method::GET, "/openapi.json", None, None, &[])
        .expect(200)
        .body;
    for (path, methods) in [
        ("/api/v1/contacts", &["get", "post"][..]),
        ("/api/v1/contacts/{id}", &["get", "patch"]),
        ("/api/v1/contacts/{id}/archive", &["post"]),
        ("/api/v1/deals", &["get", "post"]),
        ("/api/v1/deals/{id}", &["get", "patch"]),
        ("/api/v1/deals/{id}/archive", &["post"]),
        ("/api/v1/pipeline-stages", &["get"]),
        ("/api/v1/activities", &["get", "post"]),
        ("/api/v1/activities/{id}", &["get", "patch"]),
        ("/api/v1/activities/{id}/archive", &["post"]),
        ("/api/v1/payments", &["get", "post"]),
        ("/api/v1/payments/{id}", &["get", "patch"]),
        ("/api/v1/payments/{id}/archive", &["post"]),
    ] {
        for method in methods {
            let operation = &doc["paths"][path][method];
            assert!(
                operation.is_object(),
                "{method} {path} missing from the OpenAPI document"
            );
            assert_eq!(
                operation["security"],
                json!([{"bearer": []}]),
                "{method} {path}"
            );
        }
    }
}

#[test]
fn lists_filter_search_and_page_the_new_resources() {
    let crm = Crm::start();
    let t = crm.owner.as_str();
    let acme = id(&crm.customer(t, "Acme"));
    let globex = id(&crm.customer(t, "Globex"));
    let stage = stages(&crm, t);

    let mut acme_contacts = Vec::new();
    for i in 0..5 {
        let body = crm
            .post(
                t,
                "/api/v1/contacts",
                json!({"customer_id": acme, "name": format!("Acme person {i}"), "email": format!("p{i}@acme.example")}),
            )
            .expect(201)
            .body;
        acme_contacts.push(id(&body));
    }
    let globex_contact = id(&crm
        .post(
            t,
            "/api/v1/contacts",
            json!({"customer_id": globex, "name": "Hank Scorpio", "email": "hank@globex.example"}),
        )
        .expect(201)
        .body);

    // A customer's contacts, newest first, each once across pages.
    let mut seen = Vec::new();
    let mut path = format!("/api/v1/contacts?customer_id={acme}&limit=2");
    loop {
        let page = crm.get(t, &path).expect(200);
        seen.extend(ids(&page));
        match page.body["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/contacts?customer_id={acme}&limit=2&cursor={c}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = acme_contacts.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let hank = crm.get(t, "/api/v1/contacts?q=SCORPIO").expect(200);
    assert_eq!(ids(&hank), [globex_contact.as_str()], "search by name");
    let by_mail = crm.get(t, "/api/v1/contacts?q=p3%40acme").expect(200);
    assert_eq!(
        ids(&by_mail),
        [acme_contacts[3].as_str()],
        "search by email"
    );
    let none = crm
        .get(t, &format!("/api/v1/contacts?customer_id={globex}&q=acme"))
        .expect(200);
    assert_eq!(ids(&none), Vec::<String>::new(), "filters combine");
    assert_eq!(
        ids(&crm.get(t, "/api/v1/contacts?q=%25").expect(200)),
        Vec::<String>::new(),
        "% is a literal"
    );

    // Moving a contact to another customer moves it between the filters.
    let moved = crm
        .patch(
            t,
            &format!("/api/v1/contacts/{}", acme_contacts[0]),
            "\"1\"",
            json!({"customer_id": globex}),
        )
        .expect(200);
    assert_eq!(moved.body["customer_id"], json!(globex));
    let globex_people = crm
        .get(t, &format!("/api/v1/contacts?customer_id={globex}"))
        .expect(200);
    assert_eq!(
        ids(&globex_people),
        [globex_contact.as_str(), acme_contacts[0].as_str()]
    );

    let deal = |customer: &str, title: &str, stage_name: &str| {
        id(&crm
            .post(
                t,
                "/api/v1/deals",
                json!({"customer_id": customer, "stage_id": stage[stage_name], "title": title,
                       "amount_minor": 1000, "currency": "EUR"}),
            )
            .expect(201)
            .body)
    };
    let d1 = deal(&acme, "Acme rollout", "Lead");
    let d2 = deal(&acme, "Acme support renewal", "Proposal");
    let d3 = deal(&globex, "Globex rollout", "Proposal");
    let list = |path: &str| ids(&crm.get(t, path).expect(200));
    assert_eq!(
        list(&format!("/api/v1/deals?customer_id={acme}")),
        [d2.as_str(), d1.as_str()]
    );
    assert_eq!(
        list(&format!("/api/v1/deals?stage_id={}", stage["Proposal"])),
        [d3.as_str(), d2.as_str()]
    );
    assert_eq!(
        list(&format!(
            "/api/v1/deals?stage_id={}&customer_id={globex}",
            stage["Proposal"]
        )),
        [d3.as_str()]
    );
    assert_eq!(list("/api/v1/deals?q=ROLLOUT"), [d3.as_str(), d1.as_str()]);
    assert_eq!(
        list(&format!("/api/v1/deals?stage_id={}", stage["Won"])),
        Vec::<String>::new()
    );

    let activity = |body: Value| id(&crm.post(t, "/api/v1/activities", body).expect(201).body);
    let a1 = activity(json!({"customer_id": acme, "kind": "note", "subject": "Met at the fair"}));
    let a2 = activity(
        json!({"customer_id": acme, "deal_id": d1, "kind": "task", "subject": "Prepare the rollout plan"}),
    );
    let a3 = activity(
        json!({"customer_id": acme, "deal_id": d1, "kind": "call", "subject": "Kick-off call", "done": true}),
    );
    let a4 = activity(json!({"customer_id": globex, "kind": "task", "subject": "Send brochure"}));
    assert_eq!(
        list(&format!("/api/v1/activities?customer_id={acme}")),
        [a3.as_str(), a2.as_str(), a1.as_str()]
    );
    assert_eq!(
        list(&format!("/api/v1/activities?deal_id={d1}")),
        [a3.as_str(), a2.as_str()]
    );
    assert_eq!(
        list("/api/v1/activities?kind=task"),
        [a4.as_str(), a2.as_str()]
    );
    assert_eq!(list("/api/v1/activities?done=true"), [a3.as_str()]);
    assert_eq!(
        list(&format!(
            "/api/v1/activities?kind=task&done=false&customer_id={acme}"
        )),
        [a2.as_str()]
    );
    assert_eq!(list("/api/v1/activities?q=brochure"), [a4.as_str()]);
    crm.patch(
        t,
        &format!("/api/v1/activities/{a2}"),
        "\"1\"",
        json!({"done": true}),
    )
    .expect(200);
    assert_eq!(
        list("/api/v1/activities?done=true"),
        [a3.as_str(), a2.as_str()]
    );

    // An activity's deal must be a deal of the activity's customer.
    crm.post(
        t,
        "/api/v1/activities",
        json!({"customer_id": globex, "deal_id": d1, "kind": "note", "subject": "Mixed up"}),
    )
    .expect_problem(422, "validation");
    let wrong = crm
        .patch(
            t,
            &format!("/api/v1/activities/{a4}"),
            "\"1\"",
            json!({"deal_id": d1}),
        )
        .expect_problem(422, "validation");
    assert_eq!(wrong.body["field"], "deal_id");
    crm.patch(
        t,
        &format!("/api/v1/activities/{a4}"),
        "\"1\"",
        json!({"deal_id": d3}),
    )
    .expect(200);

    let payment = |customer: &str, description: &str, status: &str| {
        id(&crm
            .post(
                t,
                "/api/v1/payments",
                json!({"customer_id": customer, "kind": "record", "description": description,
                       "amount_minor": 500, "currency": "EUR", "status": status, "reference": format!("ref-{description}")}),
            )
            .expect(201)
            .body)
    };
    let p1 = payment(&acme, "Setup fee", "pending");
    let p2 = payment(&acme, "Licence", "paid");
    let p3 = payment(&globex, "Setup fee", "paid");
    assert_eq!(
        list(&format!("/api/v1/payments?customer_id={acme}")),
        [p2.as_str(), p1.as_str()]
    );
    assert_eq!(
        list("/api/v1/payments?status=paid"),
        [p3.as_str(), p2.as_str()]
    );
    assert_eq!(
        list(&format!(
            "/api/v1/payments?status=paid&customer_id={globex}"
        )),
        [p3.as_str()]
    );
    assert_eq!(
        list("/api/v1/payments?status=refunded"),
        Vec::<String>::new()
    );
    assert_eq!(list("/api/v1/payments?q=setup"), [p3.as_str(), p1.as_str()]);
    assert_eq!(
        list("/api/v1/payments?q=ref-lic"),
        [p2.as_str()],
        "search by reference"
    );
}

#[test]
fn other_tenants_and_viewers_cannot_reach_reference_or_write_these_rows() {
    let crm = Crm::start();
    let t = crm.owner.as_str();
    crm.add_tenant("other");
    let intruder = crm.add_user("other", "intruder@other.org", "owner");
    let viewer = crm.add_user("default", "viewer@x.org", "viewer");
    let agent = crm.add_user("default", "agent@x.org", "agent");

    // Tenant "default": one row of each kind.
    let customer = id(&crm.customer(t, "Secret Customer"));
    let stage = stages(&crm, t);
    let contact = crm
        .post(
            t,
            "/api/v1/contacts",
            json!({"customer_id": customer, "name": "Secret Contact", "email": "secret@x.org"}),
        )
        .expect(201)
        .body;
    let deal = crm
        .post(
            t,
            "/api/v1/deals",
            json!({"customer_id": customer, "title": "Secret Deal", "amount_minor": 1, "currency": "EUR"}),
        )
        .expect(201)
        .body;
    let activity = crm
        .post(
            t,
            "/api/v1/activities",
            json!({"customer_id": customer, "deal_id": id(&deal), "kind": "note", "subject": "Secret Note"}),
        )
        .expect(201)
        .body;
    let payment = crm
        .post(
            t,
            "/api/v1/payments",
            json!({"customer_id": customer, "kind": "link", "description": "Secret Payment",
                   "amount_minor": 1, "currency": "EUR"}),
        )
        .expect(201)
        .body;
    let rows = [
        ("/api/v1/contacts", &contact),
        ("/api/v1/deals", &deal),
        ("/api/v1/activities", &activity),
        ("/api/v1/payments", &payment),
    ];

    // The other tenant: no read, list, search, filter, update or archive.
    for (collection, row) in rows {
        let path = format!("{collection}/{}", id(row));
        crm.get(&intruder, &path).expect_problem(404, "not-found");
        crm.patch(&intruder, &path, "\"1\"", json!({}))
            .expect_problem(404, "not-found");
        archive(&crm, &intruder, &path, "\"1\"").expect_problem(404, "not-found");
        for query in [
            "?limit=200".to_string(),
            "?q=Secret".to_string(),
            format!("?customer_id={customer}"),
            "?archived=true".to_string(),
        ] {
            let seen = crm
                .get(&intruder, &format!("{collection}{query}"))
                .expect(200);
            assert_eq!(ids(&seen), Vec::<String>::new(), "{collection}{query}");
        }
    }
    assert_eq!(
        ids(&crm
            .get(
                &intruder,
                &format!("/api/v1/deals?stage_id={}", stage["Lead"])
            )
            .expect(200)),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&crm
            .get(
                &intruder,
                &format!("/api/v1/activities?deal_id={}", id(&deal))
            )
            .expect(200)),
        Vec::<String>::new()
    );
    let their_stages = stages(&crm, &intruder);
    assert_eq!(their_stages.len(), 6, "each tenant has its own pipeline");
    assert!(
        their_stages
            .values()
            .all(|s| !stage.values().any(|m| m == s)),
        "and never sees ours"
    );

    // …nor reference our rows by id, and the refusal is the same 422 as for
    // an id that exists nowhere, so it cannot probe for ids either.
    let mine = id(&crm.customer(&intruder, "Intruder's own"));
    let made_up = "00000000-0000-4000-8000-000000000000";
    for (foreign, label) in [(customer.as_str(), "foreign"), (made_up, "made-up")] {
        for (collection, body) in [
            (
                "/api/v1/contacts",
                json!({"customer_id": foreign, "name": "x"}),
            ),
            (
                "/api/v1/deals",
                json!({"customer_id": foreign, "title": "x", "amount_minor": 1, "currency": "EUR"}),
            ),
            (
                "/api/v1/activities",
                json!({"customer_id": foreign, "kind": "note", "subject": "x"}),
            ),
            (
                "/api/v1/payments",
                json!({"customer_id": foreign, "kind": "link", "description": "x", "amount_minor": 1, "currency": "EUR"}),
            ),
        ] {
            let refused = crm
                .post(&intruder, collection, body)
                .expect_problem(422, "validation");
            assert_eq!(refused.body["field"], "customer_id", "{label} {collection}");
            assert_eq!(
                refused.body["detail"], "customer_id does not refer to an existing record",
                "{label} {collection}"
            );
        }
    }
    let refused = crm
        .post(
            &intruder,
            "/api/v1/deals",
            json!({"customer_id": mine, "stage_id": stage["Lead"], "title": "x", "amount_minor": 1, "currency": "EUR"}),
        )
        .expect_problem(422, "validation");
    assert_eq!(refused.body["field"], "stage_id");
    let refused = crm
        .post(
            &intruder,
            "/api/v1/activities",
            json!({"customer_id": mine, "deal_id": id(&deal), "kind": "note", "subject": "x"}),
        )
        .expect_problem(422, "validation");
    assert_eq!(refused.body["field"], "deal_id");
    assert_eq!(
        refused.body["detail"],
        "deal_id does not refer to an existing record"
    );
    // Through updates of their own rows, too.
    let own_deal = crm
        .post(
            &intruder,
            "/api/v1/deals",
            json!({"customer_id": mine, "title": "Theirs", "amount_minor": 1, "currency": "EUR"}),
        )
        .expect(201)
        .body;
    let own_path = format!("/api/v1/deals/{}", id(&own_deal));
    let refused = crm
        .patch(
            &intruder,
            &own_path,
            "\"1\"",
            json!({"stage_id": stage["Won"]}),
        )
        .expect_problem(422, "validation");
    assert_eq!(refused.body["field"], "stage_id");
    let own_contact = crm
        .post(
            &intruder,
            "/api/v1/contacts",
            json!({"customer_id": mine, "name": "Theirs"}),
        )
        .expect(201)
        .body;
    let refused = crm
        .patch(
            &intruder,
            &format!("/api/v1/contacts/{}", id(&own_contact)),
            "\"1\"",
            json!({"customer_id": customer}),
        )
        .expect_problem(422, "validation");
    assert_eq!(refused.body["field"], "customer_id");
    let own_activity = crm
        .post(
            &intruder,
            "/api/v1/activities",
            json!({"customer_id": mine, "kind": "note", "subject": "Theirs"}),
        )
        .expect(201)
        .body;
    let refused = crm
        .patch(
            &intruder,
            &format!("/api/v1/activities/{}", id(&own_activity)),
            "\"1\"",
            json!({"deal_id": id(&deal)}),
        )
        .expect_problem(422, "validation");
    assert_eq!(refused.body["field"], "deal_id");
    let theirs = crm.get(&intruder, &own_path).expect(200);
    assert_eq!(theirs.body["version"], 1, "refused writes change nothing");

    // A viewer reads everything and writes nothing (even with a valid body);
    // an agent writes and archives.
    let valid = json!({
        "/api/v1/contacts": {"customer_id": customer, "name": "x"},
        "/api/v1/deals": {"customer_id": customer, "title": "x", "amount_minor": 1, "currency": "EUR"},
        "/api/v1/activities": {"customer_id": customer, "kind": "note", "subject": "x"},
        "/api/v1/payments": {"customer_id": customer, "kind": "link", "description": "x", "amount_minor": 1, "currency": "EUR"},
    });
    for (collection, row) in rows {
        let path = format!("{collection}/{}", id(row));
        crm.get(&viewer, &path).expect(200);
        assert_eq!(ids(&crm.get(&viewer, collection).expect(200)), [id(row)]);
        crm.post(&viewer, collection, valid[collection].clone())
            .expect_problem(403, "forbidden");
        crm.patch(&viewer, &path, "\"1\"", json!({}))
            .expect_problem(403, "forbidden");
        archive(&crm, &viewer, &path, "\"1\"").expect_problem(403, "forbidden");
        let untouched = crm.get(t, &path).expect(200);
        assert_eq!(untouched.body, *row, "{collection}: nobody else changed it");
    }
    crm.get(&viewer, "/api/v1/pipeline-stages").expect(200);
    let deal_path = format!("/api/v1/deals/{}", id(&deal));
    crm.patch(
        &agent,
        &deal_path,
        "\"1\"",
        json!({"stage_id": stage["Qualified"]}),
    )
    .expect(200);
    archive(&crm, &agent, &deal_path, "\"2\"").expect(200);
    crm.request(Method::GET, "/api/v1/deals", None, None, &[])
        .expect_problem(401, "unauthenticated");
    crm.request(Method::GET, "/api/v1/pipeline-stages", None, None, &[])
        .expect_problem(401, "unauthenticated");
}

#[test]
fn payment_status_follows_the_transitions_and_bad_input_is_a_4xx_problem() {
    let crm = Crm::start();
    let t = crm.owner.as_str();
    let customer = id(&crm.customer(t, "Payer"));

    // Every (from, to) pair against the database trigger. Same-status PATCHes
    // are no-ops the trigger lets through.
    let allowed: &[(&str, &[&str])] = &[
        ("pending", &["paid", "failed", "cancelled"]),
        ("failed", &["pending", "cancelled"]),
        ("paid", &["refunded"]),
        ("cancelled", &[]),
        ("refunded", &[]),
    ];
    /// The PATCHes that take a new payment to `status`.
    fn route(status: &str) -> &'static [&'static str] {
        match status {
            "pending" => &[],
            "paid" => &["paid"],
            "failed" => &["failed"],
            "cancelled" => &["cancelled"],
            "refunded" => &["paid", "refunded"],
            other => panic!("{other}"),
        }
    }
    for (from, next) in allowed {
        for (to, _) in allowed {
            let made = crm
                .post(
                    t,
                    "/api/v1/payments",
                    json!({"customer_id": customer, "kind": "link", "description": format!("{from} to {to}"),
                           "amount_minor": 100, "currency": "EUR"}),
                )
                .expect(201)
                .body;
            let path = format!("/api/v1/payments/{}", id(&made));
            let mut version = 1;
            let mut current = made;
            for step in route(from) {
                current = crm
                    .patch(t, &path, &format!("\"{version}\""), json!({"status": step}))
                    .expect(200)
                    .body;
                version += 1;
            }
            assert_eq!(current["status"], *from);
            assert_eq!(current["next_statuses"], json!(next), "{from}");
            let res = crm.patch(t, &path, &format!("\"{version}\""), json!({"status": to}));
            if next.contains(to) || from == to {
                let moved = res.expect(200);
                assert_eq!(moved.body["status"], *to);
                assert_eq!(
                    moved.body["paid_at"].is_string(),
                    ["paid", "refunded"].contains(to),
                    "{from} → {to}: paid_at"
                );
            } else {
                let refused = res.expect_problem(409, "conflict");
                assert_eq!(
                    refused.body["detail"],
                    format!("payment status cannot change from {from} to {to}")
                );
                let after = crm.get(t, &path).expect(200);
                assert_eq!(after.body["status"], *from, "{from} → {to} refused");
                assert_eq!(after.header("etag"), format!("\"{version}\""));
            }
        }
    }
    let pending = crm
        .post(
            t,
            "/api/v1/payments",
            json!({"customer_id": customer, "kind": "record", "description": "x", "amount_minor": 1, "currency": "EUR"}),
        )
        .expect(201)
        .body;
    let pending_path = format!("/api/v1/payments/{}", id(&pending));
    let deal = crm
        .post(
            t,
            "/api/v1/deals",
            json!({"customer_id": customer, "title": "x", "amount_minor": 1, "currency": "EUR"}),
        )
        .expect(201)
        .body;
    let deal_path = format!("/api/v1/deals/{}", id(&deal));
    let activity = crm
        .post(
            t,
            "/api/v1/activities",
            json!({"customer_id": customer, "kind": "task", "subject": "x"}),
        )
        .expect(201)
        .body;
    let activity_path = format!("/api/v1/activities/{}", id(&activity));

    // (method, path, body, status, problem kind, field when we can name it)
    let deal_body =
        json!({"customer_id": customer, "title": "x", "amount_minor": 1, "currency": "EUR"});
    let payment_body = json!({"customer_id": customer, "kind": "link", "description": "x", "amount_minor": 1, "currency": "EUR"});
    let activity_body = json!({"customer_id": customer, "kind": "note", "subject": "x"});
    let deal_with = |extra: Value| Some(with(&deal_body, &extra));
    let payment_with = |extra: Value| Some(with(&payment_body, &extra));
    let activity_with = |extra: Value| Some(with(&activity_body, &extra));
    let long_q = format!("/api/v1/payments?q={}", "q".repeat(201));
    let post = Method::POST;
    let patch = Method::PATCH;
    let get = Method::GET;
    #[rustfmt::skip] // one case a line reads as a table
    let cases: Vec<Case> = vec![
        (post.clone(), "/api/v1/deals", deal_with(json!({"currency": "eur"})), 422, "validation", Some("currency")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"currency": "EURO"})), 422, "validation", Some("currency")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"currency": "E1R"})), 422, "validation", Some("currency")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"currency": 978})), 422, "validation", Some("currency")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"amount_minor": -1})), 422, "validation", Some("amount_minor")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"amount_minor": 1_000_000_000_000_001_i64})), 422, "validation", Some("amount_minor")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"amount_minor": 1.5})), 422, "validation", Some("amount_minor")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"amount_minor": "100"})), 422, "validation", Some("amount_minor")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"amount_minor": 1e30})), 422, "validation", Some("amount_minor")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"expected_close": "2030-02-30"})), 422, "validation", Some("expected_close")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"expected_close": "31/12/2030"})), 422, "validation", Some("expected_close")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"expected_close": "2030-12-31T00:00:00Z"})), 422, "validation", Some("expected_close")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"expected_close": "0000-01-01"})), 422, "validation", Some("expected_close")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"title": ""})), 422, "validation", Some("title")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"stage_id": "not-a-uuid"})), 422, "validation", Some("stage_id")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"stage_id": "00000000-0000-4000-8000-000000000000"})), 422, "validation", Some("stage_id")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"customer_id": null})), 422, "validation", Some("customer_id")),
        (post.clone(), "/api/v1/deals", deal_with(json!({"probability": 50})), 422, "validation", None),
        (post.clone(), "/api/v1/deals", Some(json!({"title": "no customer", "amount_minor": 1, "currency": "EUR"})), 422, "validation", None),
        (patch.clone(), &deal_path, Some(json!({"currency": "usd"})), 422, "validation", Some("currency")),
        (patch.clone(), &deal_path, Some(json!({"amount_minor": -5})), 422, "validation", Some("amount_minor")),
        (patch.clone(), &deal_path, Some(json!({"expected_close": "tomorrow"})), 422, "validation", Some("expected_close")),
        (patch.clone(), &deal_path, Some(json!({"customer_id": customer})), 422, "validation", None),
        (post.clone(), "/api/v1/payments", payment_with(json!({"amount_minor": 0})), 422, "validation", Some("amount_minor")),
        (post.clone(), "/api/v1/payments", payment_with(json!({"amount_minor": -100})), 422, "validation", Some("amount_minor")),
        (post.clone(), "/api/v1/payments", payment_with(json!({"currency": ""})), 422, "validation", Some("currency")),
        (post.clone(), "/api/v1/payments", payment_with(json!({"kind": "cheque"})), 422, "validation", Some("kind")),
        (post.clone(), "/api/v1/payments", payment_with(json!({"status": "refunded"})), 422, "validation", Some("status")),
        (post.clone(), "/api/v1/payments", payment_with(json!({"status": "bogus"})), 422, "validation", Some("status")),
        (post.clone(), "/api/v1/payments", payment_with(json!({"description": "d".repeat(501)})), 422, "validation", Some("description")),
        (patch.clone(), &pending_path, Some(json!({"status": "bogus"})), 422, "validation", Some("status")),
        (patch.clone(), &pending_path, Some(json!({"amount_minor": 5})), 422, "validation", None),
        (post.clone(), "/api/v1/activities", activity_with(json!({"kind": "meeting"})), 422, "validation", Some("kind")),
        (post.clone(), "/api/v1/activities", activity_with(json!({"due_at": "tomorrow"})), 422, "validation", Some("due_at")),
        (post.clone(), "/api/v1/activities", activity_with(json!({"due_at": "2030-01-31"})), 422, "validation", Some("due_at")),
        (post.clone(), "/api/v1/activities", activity_with(json!({"due_at": "9999-12-31T23:59:59-23:59"})), 422, "validation", Some("due_at")),
        (post.clone(), "/api/v1/activities", activity_with(json!({"done": "yes"})), 422, "validation", Some("done")),
        (post.clone(), "/api/v1/activities", activity_with(json!({"deal_id": "00000000-0000-4000-8000-000000000000"})), 422, "validation", Some("deal_id")),
        (patch.clone(), &activity_path, Some(json!({"due_at": "2030-13-01T00:00:00Z"})), 422, "validation", Some("due_at")),
        (patch.clone(), &activity_path, Some(json!({"customer_id": customer})), 422, "validation", None),
        (post.clone(), "/api/v1/contacts", Some(json!({"customer_id": customer, "name": "x", "email": "nope"})), 422, "validation", Some("email")),
        (post.clone(), "/api/v1/contacts", Some(json!({"customer_id": customer, "name": "x", "role": "boss"})), 422, "validation", None),
        (post.clone(), "/api/v1/contacts", Some(json!({"customer_id": customer, "name": "x\u{0}y"})), 422, "validation", Some("name")),
        (get.clone(), "/api/v1/contacts?customer_id=nope", None, 422, "validation", None),
        (get.clone(), "/api/v1/deals?stage_id=1", None, 422, "validation", None),
        (get.clone(), "/api/v1/deals?customer_id=%27%20OR%201%3D1", None, 422, "validation", None),
        (get.clone(), "/api/v1/activities?deal_id=00000000-0000-0000-0000", None, 422, "validation", None),
        (get.clone(), "/api/v1/activities?kind=meeting", None, 422, "validation", None),
        (get.clone(), "/api/v1/activities?done=maybe", None, 422, "validation", None),
        (get.clone(), "/api/v1/payments?status=lost", None, 422, "validation", None),
        (get.clone(), "/api/v1/payments?colour=red", None, 422, "validation", None),
        (get.clone(), "/api/v1/payments?limit=0", None, 422, "validation", Some("limit")),
        (get.clone(), "/api/v1/payments?cursor=garbage", None, 422, "validation", Some("cursor")),
        (get.clone(), &long_q, None, 422, "validation", Some("q")),
        (get.clone(), "/api/v1/activities/not-a-uuid", None, 422, "validation", Some("id")),
        (get.clone(), "/api/v1/payments/00000000-0000-0000-0000-000000000000", None, 404, "not-found", None),
        (patch.clone(), "/api/v1/contacts/00000000-0000-0000-0000-000000000000", Some(json!({"name": "x"})), 404, "not-found", None),
    ];
    for (method, path, body, status, kind, field) in cases {
        let shown = body.as_ref().map(Value::to_string).unwrap_or_default();
        let headers: &[(&str, &str)] = if method == Method::PATCH {
            &[("if-match", "\"1\"")]
        } else {
            &[]
        };
        let res = crm.request(method.clone(), path, Some(t), body, headers);
        assert_eq!(res.status, status, "{method} {path} {shown}: {}", res.body);
        let problem = res.expect_problem(status, kind);
        if let Some(field) = field {
            assert_eq!(problem.body["field"], field, "{method} {path} {shown}");
        }
    }
    // Nothing above changed the rows it aimed at.
    for path in [&pending_path, &deal_path, &activity_path] {
        assert_eq!(
            crm.get(t, path).expect(200).header("etag"),
            "\"1\"",
            "{path}"
        );
    }
    // Search text is data, not SQL, on every new list.
    for collection in [
        "/api/v1/contacts",
        "/api/v1/deals",
        "/api/v1/activities",
        "/api/v1/payments",
    ] {
        for q in ["%27%20OR%201%3D1%20--", "%25", "_", "%5C"] {
            crm.get(t, &format!("{collection}?q={q}")).expect(200);
        }
    }
}

/// `base` with the fields of `extra` set over it.
fn with(base: &Value, extra: &Value) -> Value {
    let mut body = base.clone();
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    body
}
