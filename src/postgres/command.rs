//! Pure builders for the PostgreSQL programs we run. Unit-tested on their
//! arguments; the caller adds the account switch and the environment.

use std::path::Path;

use tokio::process::Command;

/// The superuser `initdb` creates; the daemon uses it for migrations and tools.
pub const SUPERUSER: &str = "postgres";

/// `initdb` for a new cluster: UTF8, SCRAM everywhere, data checksums on.
///
/// The superuser password comes from a 0600 file, never from the command
/// line, where any local user could read it in `/proc`.
#[must_use]
pub fn initdb(bin_dir: &Path, pgdata: &Path, pwfile: &Path) -> Command {
    let mut cmd = Command::new(bin_dir.join("initdb"));
    cmd.arg("--pgdata")
        .arg(pgdata)
        .arg("--username")
        .arg(SUPERUSER)
        .arg("--pwfile")
        .arg(pwfile)
        .args([
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ])
        .arg("--data-checksums");
    cmd
}

/// Runs `postgres` in the foreground instead of `pg_ctl start`.
///
/// `pg_ctl` forks and detaches, so we would lose the child handle and have
/// to guess liveness from `postmaster.pid`, which outlives a crash. Owning
/// the process gives us its exit status the moment it dies.
///
/// The socket directory and `listen_addresses` are on the command line, not
/// only in the config file: they are the invariant "private socket, no TCP
/// unless configured", and the command line wins over any file an operator
/// edits (including `ALTER SYSTEM`).
#[must_use]
pub fn postgres(
    bin_dir: &Path,
    pgdata: &Path,
    socket_dir: &Path,
    port: u16,
    listen_addresses: &str,
) -> Command {
    let mut cmd = Command::new(bin_dir.join("postgres"));
    cmd.arg("-D")
        .arg(pgdata)
        .arg("-k")
        .arg(socket_dir)
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg(format!("listen_addresses={listen_addresses}"));
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn initdb_turns_on_scram_utf8_and_checksums() {
        let cmd = initdb(
            Path::new("/pg/bin"),
            Path::new("/d/pg/data"),
            Path::new("/d/secrets/su"),
        );
        assert_eq!(cmd.as_std().get_program(), "/pg/bin/initdb");
        assert_eq!(
            args(&cmd),
            [
                "--pgdata",
                "/d/pg/data",
                "--username",
                "postgres",
                "--pwfile",
                "/d/secrets/su",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--data-checksums"
            ]
        );
    }

    #[test]
    fn postgres_listens_on_the_private_socket_and_no_tcp_by_default() {
        let cmd = postgres(
            Path::new("/pg/bin"),
            Path::new("/d/pg/data"),
            Path::new("/d/run/postgres"),
            5432,
            "",
        );
        assert_eq!(
            args(&cmd),
            [
                "-D",
                "/d/pg/data",
                "-k",
                "/d/run/postgres",
                "-p",
                "5432",
                "-c",
                "listen_addresses="
            ]
        );
    }
}
