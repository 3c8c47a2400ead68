//! # pagodirecto
//!
//! The whole PagoDirecto CRM server in one process: it obtains and
//! supervises its own PostgreSQL, migrates it, serves the multi-tenant CRM
//! API, and takes verified backups.
//!
//! ## Bird's-eye view
//!
//! ```text
//! pagodirecto run                    (cgroup pagodirecto-<id>/daemon: [limits] memory, cpu)
//!  ├─ supervisor ── postgres (child, own process group, unprivileged user,
//!  │                 cgroup …/postgres: postgres_memory/cpu, rlimits)
//!  ├─ HTTP server: accept loop (TLS, h2/http1.1) → edge (request ids, headers,
//!  │               CORS, rate limits, body limit, shedding) →
//!  │               /api/v1/* (JWT, roles, RLS-isolated tenants), /openapi.json,
//!  │               /health /ready /metrics, the web app (embedded SPA)
//!  ├─ control socket (unix, 0600): the CLI talks to the running daemon
//!  ├─ schedules: backups (cron) with retention, restore drills, audit
//!  │             pruning — led jobs: run by one instance, caught up when
//!  │             an instance starts leading
//!  ├─ watchers: config file (+ SIGHUP), TLS certificate files, resource
//!  │            sampler, systemd watchdog, `[update] automatic` checks
//!  └─ on update: backup → drain → stop postgres → start the new binary with
//!               the listening sockets → it says ready (or the old image
//!               is exec'd again, restoring the backup if it migrated)
//! ```
//!
//! Start: config → logging → lock the data dir → cgroups (when the host
//! allows) → find (or download) PostgreSQL binaries → initdb on first start →
//! start postgres as a child and wait until it accepts connections → create the database and migrate (under
//! an advisory lock) → first owner (and `--demo` data) → open the pool →
//! bind listeners (or take inherited ones) → READY=1 (and `ready` to a
//! predecessor) → serve. Stop (SIGTERM/SIGINT): stop accepting, drain,
//! abort a running backup, stop postgres, exit 0.
//!
//! ## Code map (calls go down, events go up)
//!
//! - `main.rs`: parses the command line, maps the outcome to an exit code.
//! - [`cli`]: one module per subcommand; builds the runtime. `cli::doctor`
//!   checks the host and config read-only, with a fix for each problem.
//! - [`config`]: the TOML file + `PAGODIRECTO_*` environment + flags, validated
//!   in the only constructor, `Config::load`; `config::watch` notices edits.
//! - [`paths`]: every on-disk location, derived from the data dir.
//! - [`daemon`]: the composition root and event loop; the only module that
//!   knows every other one. `daemon::led`: what the leader runs once —
//!   the catch-up of missed scheduled runs when it starts leading, and
//!   audit pruning (`[audit]`). `daemon::upgrade`: replacing the running
//!   process with a new binary (pre-update backup, hand-over, health gate,
//!   rollback) and the automatic update checks.
//! - [`handover`]: listening sockets across processes — taken over at start
//!   (systemd `LISTEN_FDS`, or `PAGODIRECTO_HANDOVER` from a predecessor),
//!   passed to a successor (spawn) or to the old image again (exec), the
//!   readiness pipe, and the last update's record (`<data>/update.json`).
//! - [`supervisor`]: generic child supervision (restart, backoff, crash loop,
//!   stop ladder), and the limits a child takes on before exec (its
//!   cgroup, rlimits).
//! - [`cgroup`]: the appliance's cgroups (v2 delegated, v1, or none with the
//!   reason): the tree, its memory/CPU limits, PostgreSQL's usage and OOM
//!   kills.
//! - [`postgres`]: the cluster (initdb, settings, account, binaries) and the
//!   supervised server's state.
//! - [`database`]: where the app's database is — the embedded cluster or an
//!   external server (`[database] url`): admin connections, client tools,
//!   the API pool (`SET ROLE` when external), TLS; `database::monitor`
//!   (external liveness), `database::leader` (the advisory-lock lease for
//!   jobs that must run once), `database::jobs` (their last success, in
//!   `ops.job_runs`, which every leader sees), `database::shared` (signing
//!   keys shared through the database; `daemon` polls them so a rotation
//!   on one instance reaches all).
//! - [`migrate`]: embedded SQL migrations under an advisory lock.
//! - [`backup`]: snapshot-consistent dumps through zstd (and age), verified,
//!   with manifests, retention, drills and restore (parallel `pg_restore -j`
//!   from a checked, decompressed copy whose table of contents
//!   `backup::archive` completes with the data offsets, so the largest
//!   tables start first; the replaced database kept aside and backed up
//!   once the restored one serves); `backup::schedule` for cron.
//! - [`update`]: self-update of a standalone install: the release feed
//!   (`update::feed`), the signature check against the keys built into the
//!   binary, the unpacked binary's own `version --json` (`update::verify`),
//!   a new binary staged beside the executable, the swap that keeps
//!   `<exe>.previous`, and the dpkg check (a .deb is updated by apt).
//! - [`auth`]: password hashes, signing keys and tokens, the role →
//!   permission table.
//! - [`crm`]: tenants and users created by the appliance and the CLI (as
//!   the superuser; the API goes through RLS instead), and audit pruning.
//! - [`demo`]: the `run --demo` data set, seeded set-based as the superuser.
//! - [`health`]: readiness checks shared by `/ready` and `status`.
//! - [`telemetry`]: the Prometheus recorder (with its upkeep, and the HTTP
//!   request series' handles kept by the edge) and the resource sampler
//!   (the last hour of daemon and postgres memory/CPU and disk free).
//! - [`http`]: the axum router and server; `http::api::*` one module per
//!   resource, all through `http::api::Scoped` (the tenant-scoped
//!   transaction; `Scoped::read` sends a whole read in one round trip) and
//!   `http::error::ApiError` (problem+json); the five CRM resources share
//!   list/get/insert/update/archive through `http::api::resource::Resource`
//!   and `http::api::list::ListQuery`; `http::edge`
//!   is the proxy layer; `http::server` the accept loop over already-bound
//!   sockets (plain or TLS, header read timeout, drain); `http::tls` the
//!   rustls setup and the reloadable certificate; `http::assets` serves the
//!   web app (`assets/dist`, embedded at compile time) as the fallback,
//!   through the edge but outside the router's layers.
//! - [`control`]: the control socket protocol (server and client).
//! - [`logging`]: tracing to stderr and daily files (the per-request access
//!   lines to the files only, in batches, ≤ 50 ms late); reading them back.
//! - [`systemd`]: READY/STATUS/STOPPING/WATCHDOG notifications (no-ops
//!   outside systemd), and the unit file (`systemd/pagodirecto.service`)
//!   that the .deb ships and `pagodirecto service install` writes
//!   (`cli::service`, with the user, directories and default config).
//!
//! Outside `src/`: `packaging/` (the default config, the sysusers.d entry,
//! the .deb's maintainer scripts, `build-release.sh`; cargo-deb reads
//! `[package.metadata.deb]` in Cargo.toml) and `systemd/` (the unit).
//! - [`lock`], [`secrets`], [`fsutil`]: the data-dir lock, generated secrets,
//!   atomic private files.
//!
//! With `[database] url` there is no postgres child: the start skips the
//! binaries, `initdb` and supervision, and a monitor task feeds the same
//! readiness the supervisor feeds. The CLI's own database sessions
//! (`cli::database`: migrate, psql, user, tenant, offline backups) reach
//! the same server through the same [`database::Access`].
//!
//! ## Invariants
//!
//! - Several instances may share one external database: migrations, the
//!   first owner and scheduled jobs are serialised by advisory locks; state
//!   that matters for security lives in the database.
//! - No PostgreSQL program runs as root; postgres listens on a private unix
//!   socket, and on TCP only when configured.
//! - No postgres outlives its daemon: it is our foreground child with a
//!   parent-death signal, and leftovers in our PGDATA are stopped before start.
//! - Where the host allows a cgroup, postgres is in its own one from before
//!   its first instruction (it joins between fork and exec), so its memory
//!   limit counts everything it and its backends allocate.
//! - One daemon per data directory (`flock`).
//! - Only `daemon` wires subsystems; lower modules get a config section,
//!   `Paths`, a cancellation token and channels, never the whole `Config`.
//! - `http` and `control` are the only modules that serialise to the outside
//!   (plus the backup manifest, a file format; `update` only reads the
//!   release feed).
//! - Nothing from the release feed runs or replaces the binary before a key
//!   built into the binary verified its signature; the key list is never
//!   empty (a compile-time assertion).
//! - Tenant isolation is enforced by PostgreSQL (forced RLS, composite foreign
//!   keys), not by handlers: the API's role owns nothing and sees no rows
//!   until `iam.begin_request` scopes its transaction.
//! - A TLS certificate is served only after it parsed and matched its key;
//!   a refused replacement leaves the one in use, and a swap reaches new
//!   handshakes only, never an open connection.
//! - A backup is good only once its manifest exists, which is written after
//!   the file is fsynced, renamed and verified.
//! - A request path reaches the filesystem only in `--dev-assets` mode, and
//!   there only inside its directory; otherwise the web app is looked up by
//!   name among the files embedded at build time.

pub mod cli;
pub mod config;
pub mod paths;
pub mod daemon;
pub mod handover;
pub mod supervisor;
pub mod cgroup;
pub mod postgres;
pub mod database;
pub mod migrate;
pub mod auth;
pub mod crm;
pub mod demo;
pub mod backup;
pub mod update;
pub mod health;
pub mod telemetry;
pub mod http;
pub mod control;
pub mod logging;
pub mod systemd;
pub mod lock;
pub mod secrets;
pub mod fsutil;
