//! `pagodirecto migrate [--status]`.

use std::process::ExitCode;

use anyhow::Result;

use super::database::Session;
use crate::config::Loaded;
use crate::daemon::{self, APP_SECRET};
use crate::migrate;
use crate::secrets::SecretFile;

pub async fn run(loaded: Loaded, status_only: bool) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let session = Session::open(&loaded).await?;
    let result = act(&loaded, &session, status_only).await;
    session.close().await?;
    result
}

async fn act(loaded: &Loaded, session: &Session, status_only: bool) -> Result<ExitCode> {
    let config = &loaded.config;
    if !status_only {
        let app_password = SecretFile::new(&config.paths().secrets_dir(), APP_SECRET)
            .load_or_create(session.access.owner())?;
        daemon::bootstrap(&session.access, config, &app_password).await?;
    }
    let (client, conn) = session.connect().await?;
    let states = migrate::status(&client).await?;
    drop(client);
    let _ = conn.await;
    let known = migrate::latest_known();
    let mut pending = 0;
    for state in &states {
        let mark = match (&state.applied_on, state.version > known) {
            (Some(_), true) => "applied (newer than this binary!)",
            (Some(_), false) => "applied",
            (None, _) => {
                pending += 1;
                "pending"
            }
        };
        println!(
            "V{:<4} {:<32} {:<10} {}",
            state.version,
            state.name,
            mark,
            state.applied_on.as_deref().unwrap_or("")
        );
    }
    if status_only && pending > 0 {
        println!(
            "{pending} pending; they are applied at the next start or by `pagodirecto migrate`"
        );
    }
    Ok(ExitCode::SUCCESS)
}
