//! The `pagodirecto` executable: parse the command line, run it, map the
//! outcome to an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use pagodirecto::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pagodirecto: {err:#}"); // `{:#}` prints the cause chain on one line
            ExitCode::FAILURE
        }
    }
}
