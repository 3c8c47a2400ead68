-- What instances sharing one database must agree on, kept by the
-- administrative role only (no grant to pagodirecto_app).
--
-- ops.shared_files was created at run time by versions before this
-- migration (database::shared, external databases only): IF NOT EXISTS keeps
-- such a table, and its columns are the same.
CREATE TABLE IF NOT EXISTS ops.shared_files (
    name       text PRIMARY KEY,
    content    text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The last success of each job that must run once across instances
-- (scheduled backups, audit pruning), so a new leader catches up a run the
-- old one missed, and only that.
CREATE TABLE IF NOT EXISTS ops.job_runs (
    job          text PRIMARY KEY,
    last_success timestamptz NOT NULL,
    detail       text NOT NULL DEFAULT ''
);
