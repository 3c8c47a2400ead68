//! `pagodirecto tenant add` and `pagodirecto user add | reset-password`:
//! for operators and scripts, with the daemon running or stopped.
//!
//! A password is read from stdin when stdin is not a terminal (scripts:
//! `echo "$PW" | pagodirecto user add …`), else prompted for without echo.
//! It never appears on the command line, where `ps` would show it.

use std::io::{BufRead as _, IsTerminal as _};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

use super::database::Session;
use crate::auth::{self, Role};
use crate::config::Loaded;
use crate::crm;

pub async fn add_tenant(loaded: Loaded, name: String) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let session = Session::open(&loaded).await?;
    let result = async {
        let (mut client, conn) = session.connect().await?;
        let id = crm::create_tenant(&mut client, &name).await?;
        drop(client);
        let _ = conn.await;
        println!("created tenant {name:?} ({id})");
        Ok(ExitCode::SUCCESS)
    }
    .await;
    session.close().await?;
    result
}

pub async fn add_user(
    loaded: Loaded,
    tenant: String,
    email: String,
    role: Role,
    name: Option<String>,
) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let password = read_password(&format!("password for {email}: "))?;
    let hash = auth::hash_password(password).await?;
    let session = Session::open(&loaded).await?;
    let result = async {
        let (client, conn) = session.connect().await?;
        let id = crm::create_user(
            &client,
            &tenant,
            &email,
            name.as_deref().unwrap_or(""),
            role,
            &hash,
        )
        .await?;
        drop(client);
        let _ = conn.await;
        println!(
            "created {} {email} in tenant {tenant:?} ({id})",
            role.as_str()
        );
        Ok(ExitCode::SUCCESS)
    }
    .await;
    session.close().await?;
    result
}

pub async fn reset_password(loaded: Loaded, email: String) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let password = read_password(&format!("new password for {email}: "))?;
    let hash = auth::hash_password(password).await?;
    let session = Session::open(&loaded).await?;
    let result = async {
        let (client, conn) = session.connect().await?;
        crm::reset_password(&client, &email, &hash).await?;
        drop(client);
        let _ = conn.await;
        println!("password of {email} reset; its sessions are revoked and any lockout lifted");
        Ok(ExitCode::SUCCESS)
    }
    .await;
    session.close().await?;
    result
}

fn read_password(prompt: &str) -> Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(prompt).context("reading the password")?;
        let again = rpassword::prompt_password("again: ").context("reading the password")?;
        if first != again {
            bail!("the two passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.chars().count() < auth::MIN_PASSWORD_LEN {
        bail!(
            "the password must be at least {} characters",
            auth::MIN_PASSWORD_LEN
        );
    }
    Ok(password)
}

/// `pagodirecto auth rotate-key`: through the running daemon (which starts
/// signing with the new key at once), or on the key file when none runs.
pub async fn rotate_key(loaded: Loaded) -> Result<ExitCode> {
    super::init_cli_logging(&loaded);
    let socket = loaded.config.paths().control_socket();
    match crate::control::call(&socket, &crate::control::Request::RotateKey).await {
        Ok(_) => {}
        Err(crate::control::Error::NotRunning { .. }) if loaded.config.database.url.is_some() => {
            rotate_shared_key(&loaded).await?;
        }
        Err(crate::control::Error::NotRunning { .. }) => {
            let owner =
                crate::postgres::account::resolve(loaded.config.database.os_user.as_deref())?
                    .map(|a| (a.uid, a.gid));
            crate::auth::SigningKeys::rotate(
                &loaded.config.paths().secrets_dir(),
                loaded.config.auth.access_token_ttl,
                owner,
            )?;
        }
        Err(err) => return Err(err.into()),
    }
    println!(
        "rotated the token signing key; tokens signed with the previous key stay valid until they expire"
    );
    Ok(ExitCode::SUCCESS)
}

/// `auth rotate-key` with no daemon here but an external database: the keys
/// every instance uses are the database's copy, so the rotation starts from
/// it and is published back (running instances follow it within seconds).
async fn rotate_shared_key(loaded: &Loaded) -> Result<()> {
    let config = &loaded.config;
    let (paths, ttl) = (config.paths(), config.auth.access_token_ttl);
    let session = Session::open(loaded).await?;
    let result = async {
        crate::daemon::share_signing_keys(&session.access, &session.database, &paths, ttl).await?;
        crate::auth::SigningKeys::rotate(&paths.secrets_dir(), ttl, None)?;
        let (client, conn) = session.connect().await?;
        let published = crate::database::shared::publish(
            &client,
            crate::auth::keys::FILE,
            &paths.secrets_dir().join(crate::auth::keys::FILE),
        )
        .await;
        drop(client);
        let _ = conn.await;
        published.context("publishing the rotated signing keys")
    }
    .await;
    session.close().await?;
    result
}
