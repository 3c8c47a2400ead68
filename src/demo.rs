//! `pagodirecto run --demo`: a realistic demo data set for laptops, demos
//! and benchmarks — two tenants, each with a user per role, 2,000
//! customers with their contacts, deals across the pipeline in five
//! currencies, activities and payments.
//!
//! Called by `daemon` at start, as the database superuser, after migrating.
//! The rows are generated set-based in SQL (`demo/seed.sql`), one
//! transaction per tenant, so a seed takes a second or two, not minutes.
//!
//! Invariants:
//! - idempotent: the `demo_seeded` row in `ops.settings` is written last;
//!   with it present, nothing is added. A tenant that already exists is
//!   skipped, so a start killed half-way finishes the job next time instead
//!   of failing on a duplicate.
//! - no known password: all demo users share one password generated at
//!   seeding and shown once, like the first owner's. A fixed, documented
//!   demo password would be handier, but `--demo` left in a unit file on a
//!   reachable machine would then hand out owner accounts to anyone who has
//!   read our docs.

use std::fmt::Write as _;

use tokio_postgres::Client;
use uuid::Uuid;

use crate::auth::{self, Role};
use crate::crm::DEFAULT_STAGES;

/// The key of the marker row in `ops.settings`.
pub const MARKER: &str = "demo_seeded";

/// Length of the generated demo password: 24 hex digits, 96 bits.
const PASSWORD_LEN: usize = 24;

/// The per-tenant generator, run after `app.tenant_id`, `demo_profile`
/// and the random seed are set.
const SEED_SQL: &str = include_str!("demo/seed.sql");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step}")]
    Database {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("hashing the demo password")]
    Hash(#[source] auth::Error),
}

fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Database { step, source }
}

/// One demo tenant: who works there and where its customers are.
struct Tenant {
    name: &'static str,
    /// Users are `<role>@<domain>`; `.example` is reserved (RFC 2606), so
    /// no demo address can ever reach a real mailbox.
    domain: &'static str,
    /// Customer countries, repeated to weight them (see `demo_country`).
    countries: &'static [&'static str],
    users: [(&'static str, Role); 4],
    /// For `setseed`: the same tenant gets the same data on every machine.
    seed: f64,
}

const TENANTS: [Tenant; 2] = [
    Tenant {
        name: "Demo Andes",
        domain: "andes.example",
        countries: &["CO", "CO", "CO", "PE", "PE", "CL", "CL", "US"],
        users: [
            ("Valeria Quispe", Role::Owner),
            ("Andrés Restrepo", Role::Admin),
            ("Camila Rojas", Role::Agent),
            ("Tomás Herrera", Role::Viewer),
        ],
        seed: 0.17,
    },
    Tenant {
        name: "Demo Pacífico",
        domain: "pacifico.example",
        countries: &["MX", "MX", "MX", "MX", "PE", "CL", "CO", "US"],
        users: [
            ("Mariana Fernández", Role::Owner),
            ("Diego Salazar", Role::Admin),
            ("Lucía Navarro", Role::Agent),
            ("Peter Collins", Role::Viewer),
        ],
        seed: 0.42,
    },
];

/// What a seed created: to be shown once, then forgotten.
#[derive(Debug)]
pub struct Seeded {
    pub password: String,
    /// (email, role, tenant name) of every user created now.
    pub users: Vec<(String, Role, &'static str)>,
}

impl Seeded {
    /// The text for the operator: how to log in.
    #[must_use]
    pub fn announcement(&self) -> String {
        let mut text = format!(
            "PagoDirecto demo data: log in as any of these users with password {}\n\
             (demo data only; shown once)\n",
            self.password
        );
        for (email, role, tenant) in &self.users {
            let _ = writeln!(text, "  {email:<28} {:<7} {tenant}", role.as_str());
        }
        text
    }
}

/// Seeds the demo data unless it is there already. `None`: nothing to do.
pub async fn seed(client: &mut Client) -> Result<Option<Seeded>, Error> {
    let done = client
        .query_opt("SELECT 1 FROM ops.settings WHERE key = $1", &[&MARKER])
        .await
        .map_err(db("reading the demo marker"))?;
    if done.is_some() {
        return Ok(None);
    }
    let password = crate::secrets::generate()[..PASSWORD_LEN].to_string();
    // One hash for all eight users: they share the password by design, so
    // distinct salts would hide nothing, and each hash costs start-up time.
    let hash = auth::hash_password(password.clone())
        .await
        .map_err(Error::Hash)?;
    let mut users = Vec::new();
    for tenant in &TENANTS {
        if seed_tenant(client, tenant, &hash).await? {
            users.extend(tenant.users.iter().map(|(_, role)| {
                (
                    format!("{}@{}", role.as_str(), tenant.domain),
                    *role,
                    tenant.name,
                )
            }));
        }
    }
    // Fresh statistics, so the first queries (and a benchmark) get the plans
    // they will have in steady state, not ones for empty tables.
    client
        .batch_execute(
            "ANALYZE customers.customers, customers.contacts, sales.deals, \
             activities.activities, payments.payments",
        )
        .await
        .map_err(db("analysing the demo tables"))?;
    client
        .execute(
            "INSERT INTO ops.settings (key, value) VALUES ($1, jsonb_build_object('at', now(), 'tenants', $2::text[])) \
             ON CONFLICT (key) DO NOTHING",
            &[&MARKER, &TENANTS.iter().map(|t| t.name).collect::<Vec<_>>()],
        )
        .await
        .map_err(db("writing the demo marker"))?;
    Ok(Some(Seeded { password, users }))
}

/// Creates one tenant with its users and data; `false` when it exists.
async fn seed_tenant(client: &mut Client, tenant: &Tenant, hash: &str) -> Result<bool, Error> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the demo transaction"))?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM tenancy.tenants WHERE name = $1",
            &[&tenant.name],
        )
        .await
        .map_err(db("looking up the demo tenant"))?;
    if exists.is_some() {
        return Ok(false);
    }
    let id: Uuid = tx
        .query_one(
            "INSERT INTO tenancy.tenants (name) VALUES ($1) RETURNING id",
            &[&tenant.name],
        )
        .await
        .map_err(db("creating the demo tenant"))?
        .get(0);
    // From here on every tenant_id column takes its default from this.
    tx.execute(
        "SELECT set_config('app.tenant_id', $1, true)",
        &[&id.to_string()],
    )
    .await
    .map_err(db("scoping the demo transaction"))?;
    let (names, kinds): (Vec<&str>, Vec<&str>) = DEFAULT_STAGES.iter().copied().unzip();
    tx.execute(
        "INSERT INTO sales.pipeline_stages (name, kind, position) \
         SELECT name, kind, position::int - 1 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s (name, kind, position)",
        &[&names, &kinds],
    )
    .await
    .map_err(db("creating the demo pipeline"))?;
    for (name, role) in &tenant.users {
        tx.execute(
            "INSERT INTO iam.users (email, name, role, password_hash) VALUES ($1, $2, $3, $4)",
            &[
                &format!("{}@{}", role.as_str(), tenant.domain),
                name,
                &role.as_str(),
                &hash,
            ],
        )
        .await
        .map_err(db("creating the demo users"))?;
    }
    // JIT off: the planner prices these generator statements high enough to
    // JIT-compile them, which took ~0.5 s per statement, against ~0.1 s to
    // simply run one.
    tx.batch_execute(
        "SET LOCAL jit = off; \
         CREATE TEMP TABLE demo_profile (countries text[] NOT NULL) ON COMMIT DROP",
    )
    .await
    .map_err(db("preparing the demo generator"))?;
    tx.execute("INSERT INTO demo_profile VALUES ($1)", &[&tenant.countries])
        .await
        .map_err(db("preparing the demo generator"))?;
    tx.execute("SELECT setseed($1)", &[&tenant.seed])
        .await
        .map_err(db("seeding the random generator"))?;
    tx.batch_execute(SEED_SQL)
        .await
        .map_err(db("generating the demo data"))?;
    tx.commit()
        .await
        .map_err(db("committing the demo tenant"))?;
    Ok(true)
}
