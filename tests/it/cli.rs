//! Command-line behaviour that needs no running daemon: config errors.

use crate::support::DataDir;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_unknown_key_is_an_error_naming_the_key_and_file() {
    let data = DataDir::new();
    let file = data.path().join("bad.toml");
    std::fs::write(&file, "[server]\nlisten = [\"127.0.0.1:0\"]\nlistne = 1\n").expect("write");
    let file = file.to_str().expect("utf8");
    for args in [
        vec!["config", "check", "--config", file],
        vec!["run", "--config", file],
    ] {
        let out = data.cli(&args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("server.listne: unknown key"),
            "{args:?}: {err}"
        );
        assert!(err.contains(file), "{args:?}: {err}");
    }
    assert!(!data.path().join("pg").exists(), "nothing was started");
}

#[test]
fn a_bad_value_is_an_error_naming_the_key() {
    let data = DataDir::new();
    let file = data.path().join("bad.toml");
    std::fs::write(&file, "[limits]\npostgres_memory = \"a lot\"\n").expect("write");
    let out = data.cli(&["config", "check", "--config", file.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("limits.postgres_memory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let data = DataDir::new();
    let out = std::process::Command::new(crate::support::BIN)
        .args(["config", "check", "--data-dir"])
        .arg(data.path())
        .env("PAGODIRECTO_LIMITS__MAX_CONNECTIONS", "many")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PAGODIRECTO_LIMITS__MAX_CONNECTIONS"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreadable_config_file_is_an_error_naming_it() {
    let data = DataDir::new();
    let missing = data.path().join("missing.toml");
    let out = data.cli(&["run", "--config", missing.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("cannot read config file {}", missing.display())),
        "{}",
        stderr(&out)
    );
    let dir = data.path().to_str().expect("utf8");
    let out = data.cli(&["config", "check", "--config", dir]);
    assert!(
        stderr(&out).contains("cannot read config file"),
        "a directory is not a config file: {}",
        stderr(&out)
    );
}

#[test]
fn config_show_prints_the_effective_config() {
    let data = DataDir::new();
    let out = data.cli(&["config", "show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains(&format!("data_dir = \"{}\"", data.path().display())),
        "{text}"
    );
    assert!(text.contains("[limits]"), "{text}");
}
