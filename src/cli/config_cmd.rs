//! `pagodirecto config check | show`.

use std::process::ExitCode;

use anyhow::Result;

use super::ConfigAction;
use crate::config::{ConfigError, Loaded};

pub fn run(action: &ConfigAction, loaded: Result<Loaded, ConfigError>) -> Result<ExitCode> {
    let loaded = loaded?;
    match action {
        ConfigAction::Check => println!("configuration is valid ({})", loaded.source),
        ConfigAction::Show => {
            println!(
                "# effective configuration (from {}, environment and flags)",
                loaded.source
            );
            print!("{}", loaded.config.to_redacted_toml());
        }
    }
    Ok(ExitCode::SUCCESS)
}
