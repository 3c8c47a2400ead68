//! `pagodirecto logs`: reads the daily files wherever the config puts them.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::config::Loaded;
use crate::logging::{self, Service};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ServiceArg {
    App,
    Postgres,
}

pub fn run(
    loaded: &Loaded,
    follow: bool,
    lines: usize,
    service: Option<ServiceArg>,
) -> Result<ExitCode> {
    let paths = loaded.config.paths();
    let dir = paths.log_dir();
    let service = service.map(|s| match s {
        ServiceArg::App => Service::App,
        ServiceArg::Postgres => Service::Postgres,
    });
    let keep = move |line: &str| service.is_none_or(|s| logging::line_is_from(line, s));
    let files = match logging::files(dir) {
        Ok(files) => files,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "pagodirecto: no logs yet in {} (has the daemon run with this data dir?)",
                dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    for line in
        logging::tail(&files, lines, keep).with_context(|| format!("reading {}", dir.display()))?
    {
        println!("{line}");
    }
    if follow {
        logging::follow(dir, keep, |line| println!("{line}"))
            .with_context(|| format!("following {}", dir.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
