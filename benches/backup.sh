#!/usr/bin/env bash
# benches/backup.sh: how long pagodirecto takes to back up and restore a
# realistic CRM database, and how big its backups are, next to the old stack's
# method on the same data, in the same run.
#
# Usage (as root: the daemon runs postgres as the `postgres` user):
#   CARGO_TARGET_DIR=/work/target-main benches/backup.sh
#
# Environment:
#   RUNS=3          runs per measurement (each run and the median are shown; >= 2)
#   BUILD=1         `cargo build --release` first (0: use the binary as it is)
#   PD_BIN=...      the daemon binary [${CARGO_TARGET_DIR:-target}/release/pagodirecto]
#   PG_BIN=...      PostgreSQL client binaries for the old stack [/usr/lib/postgresql/15/bin]
#   SCALE=1         multiplies the generated row counts (1: ~600 MB database)
#   MIN_DB_MB=500   refuse to measure a smaller database (pg_database_size, MiB)
#   DIAG=1          also time the parts (dump alone, zstd alone, verification
#                   alone, pg_restore alone, ...) once each, to show where the
#                   time goes (including zstd -dc to a copy and pg_restore -j
#                   of it, the restore proper), and one what-if (pg_restore
#                   with lz4 TOAST compression); adds ~2 minutes
#   HOLD=FILE       after generating the data, write how to reach the daemon
#                   and its postgres (shell variables) to FILE and wait until
#                   FILE is deleted (at most 2 hours), then measure as usual:
#                   for experiments on the generated data by hand
#
# What is measured (each RUNS times, ours and the old stack alternating, after
# a `sync` and a CHECKPOINT so that no step pays for the previous one's writes,
# and after one untimed pg_dump as a warm-up):
#   backup, ours    `pagodirecto backup create`: row counts, pg_dump -Fc -Z0 |
#                   zstd -3 (2 threads) | sha256 > file, fsync, then verification
#                   (checksum + pg_restore --list over the whole decompressed stream)
#   backup, old     the old script's `pg_dump DB | gzip > file.sql.gz` (plain SQL,
#                   gzip's default level 6) over the same private socket, no fsync
#   restore, ours   `pagodirecto restore NAME --yes`: verify the backup while
#                   decompressing it to a temporary file, then pg_restore -j
#                   (one job per core) of that file into a fresh database;
#                   migrate, swap (the current database set aside) -> the API
#                   serves again: this time, printed by `restore`, is the one
#                   compared with the old stack's; then the safety backup of
#                   the database set aside, and its drop (the total is shown too)
#   backup of the then-current data: a `backup create` measured just before each
#                   restore, so the restore's own work (total minus one backup) shows
#   restore, old    restore-db.sh's way: a fresh database (created untimed), then
#                   `gunzip -c file.sql.gz | psql -q -d fresh` (ON_ERROR_STOP=1 is
#                   added so a broken restore cannot pass; it costs nothing)
# Every restore is checked (untimed) to hold exactly the generated rows.
#
# The data: ~600 MB (pg_database_size) of generated CRM data in 24 tenants:
# customers with names, companies, e-mail addresses and phones combined from
# word lists, free-text notes and activity bodies of random prose (50-2000
# characters of words drawn with Zipf-like frequencies from ~4,400 words:
# ~600 English/business words plus ~3,800 made-up words, with punctuation and
# numbers, amounts and dates mixed in), deals, payments, contacts, and an audit
# log with a jsonb snapshot per created row and before/after pairs for updated
# ones (as audit.record() writes them; the audit log is ~60% of the
# database, as it grows to be in service). The prose compresses a little
# harder than English (gzip ~2.3:1 on the text alone; the whole plain dump
# ~3:1), not 55:1 like pgbench rows (see /work/shared/POSTGRES-FACTS.md).
# Generation runs set-based in two psql sessions (one per core, disjoint
# tenants) and takes 20-60 s. The whole script takes 7-9 minutes.
#
# The daemon runs with an empty config file of our own (built-in defaults),
# no scheduled backups or drills (PAGODIRECTO_BACKUP__SCHEDULE="" and
# PAGODIRECTO_BACKUP__DRILL=""), and no other PAGODIRECTO_* variables. All
# database work goes through the daemon's private socket in our temp dir; the
# distribution's cluster is not touched. Every process and temp dir the script
# creates is removed on exit.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
BUILD=${BUILD:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PD_BIN=${PD_BIN:-$TARGET_DIR/release/pagodirecto}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SCALE=${SCALE:-1}
MIN_DB_MB=${MIN_DB_MB:-500}
DIAG=${DIAG:-1}
DB=pagodirecto # the appliance's database (config default)

# Targets: ours / old stack.
BACKUP_RATIO_MAX=0.30
RESTORE_RATIO_MAX=0.80
SIZE_RATIO_MAX=1.00

START_TIMEOUT=120  # daemon cold start (initdb + migrations)
STOP_TIMEOUT=60    # daemon stop after SIGTERM, before SIGKILL
STEP_TIMEOUT=900   # any single timed step
GONE_TIMEOUT=10

log() { printf '%s\n' "$*" >&2; }
die() {
    log "backup.sh: $*"
    exit 1
}

[[ $EUID -eq 0 ]] || die "run as root (the daemon runs postgres as the 'postgres' account)"
if ! [[ $RUNS =~ ^[0-9]+$ ]] || ((RUNS < 2)); then die "RUNS must be a whole number >= 2 (got '$RUNS')"; fi
[[ $SCALE =~ ^[0-9]+([.][0-9]+)?$ ]] || die "SCALE must be a positive number (got '$SCALE')"
for tool in curl jq zstd gzip gunzip awk sort stat sync timeout; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
for prog in pg_dump pg_restore psql; do
    [[ -x $PG_BIN/$prog ]] || die "no $PG_BIN/$prog (set PG_BIN)"
done

# Isolation from the caller's environment: no daemon config from variables,
# no libpq defaults.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^PAGODIRECTO_' || true)
unset PGHOST PGPORT PGDATA PGUSER PGDATABASE PGOPTIONS PGSERVICE PGSERVICEFILE PGPASSWORD PGPASSFILE PGSSLMODE

if [[ $BUILD == 1 ]]; then
    log "building: cargo build --release (target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x $PD_BIN ]] || die "no daemon binary at $PD_BIN (build it, or set PD_BIN / CARGO_TARGET_DIR)"

cd / || die "cd /"

# ---------------------------------------------------------------------------
# Bookkeeping and cleanup

declare -a TMPDIRS=()  # removed on exit
declare -A CHILDREN=() # pid -> what: our background processes still unreaped

new_dir() { # new_dir VAR: a fresh temp dir
    local _nd
    _nd=$(mktemp -d /tmp/pd-bench.XXXXXX) || die "mktemp failed"
    TMPDIRS+=("$_nd")
    printf -v "$1" '%s' "$_nd"
}

alive() { # alive PID: exists and is not a zombie
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

procs_under() { # procs_under DIR: live pids whose cwd is DIR or below it (postgres runs in its data dir)
    QUOTING_STYLE=literal stat -c '%N' /proc/[0-9]*/cwd 2>/dev/null |
        awk -v t="$1" '$2 == "->" && ($3 == t || index($3, t "/") == 1) { split($1, p, "/"); print p[3] }'
}

wait_gone() { # wait_gone DIR: SIGKILL what still runs there (only our postgres can), until none is left
    local deadline=$(($(date +%s) + GONE_TIMEOUT)) pids
    while :; do
        pids=$(procs_under "$1")
        [[ -z $pids ]] && return 0
        # shellcheck disable=SC2086 # one pid per word
        kill -KILL $pids 2>/dev/null
        (($(date +%s) < deadline)) || {
            log "processes still running in $1: $pids"
            return 1
        }
        sleep 0.05
    done
}

stop_child() { # stop_child PID GRACE SIGNAL...: each signal in turn, GRACE s after the first, 5 s after the others; then reap
    local pid=$1 grace=$2 sig deadline
    shift 2
    for sig in "$@"; do
        alive "$pid" || break
        kill "-$sig" "$pid" 2>/dev/null
        deadline=$(($(date +%s) + grace))
        while alive "$pid" && (($(date +%s) < deadline)); do sleep 0.05; done
        grace=5
    done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    REAPED_RC=$?
    unset "CHILDREN[$pid]"
}

cleanup() {
    local pid dir
    trap - EXIT INT TERM
    for pid in "${!CHILDREN[@]}"; do
        case ${CHILDREN[$pid]} in
        daemon)
            stop_child "$pid" "$STOP_TIMEOUT" TERM KILL
            if ((REAPED_RC != 0)); then
                log "warning: the daemon exited with status $REAPED_RC on SIGTERM; its last lines:"
                tail -n 20 "$DAEMON_LOG" >&2
            fi
            ;;
        *) stop_child "$pid" 5 TERM KILL ;;
        esac
    done
    for dir in "${TMPDIRS[@]}"; do
        wait_gone "$dir"
        rm -rf -- "$dir"
    done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }

# ---------------------------------------------------------------------------
# The daemon

new_dir WORK # ours (root's): config, logs, SQL, the old stack's dumps
new_dir DATA # the daemon's data dir (it chowns it to postgres)
CONFIG="$WORK/pagodirecto.toml"
printf '# benches/backup.sh: built-in defaults\n' >"$CONFIG"
DAEMON_LOG="$WORK/daemon.log"

pd() { # the CLI, with the daemon's config and data dir
    PAGODIRECTO_BACKUP__SCHEDULE="" PAGODIRECTO_BACKUP__DRILL="" \
        timeout "$STEP_TIMEOUT" "$PD_BIN" --config "$CONFIG" --data-dir "$DATA" "$@"
}

daemon_died() {
    log "--- daemon output (last 30 lines) ---"
    tail -n 30 "$DAEMON_LOG" >&2
    die "$*"
}

log "starting the daemon on $DATA"
PAGODIRECTO_BACKUP__SCHEDULE="" PAGODIRECTO_BACKUP__DRILL="" \
    "$PD_BIN" --config "$CONFIG" --data-dir "$DATA" run --listen 127.0.0.1:0 \
    >>"$DAEMON_LOG" 2>&1 </dev/null &
DAEMON_PID=$!
CHILDREN[$DAEMON_PID]=daemon
deadline=$(($(date +%s) + START_TIMEOUT))
while :; do
    if [[ -s $DATA/run/http.addr ]]; then
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$(tr -d ' \n' <"$DATA/run/http.addr")/ready" || true)
        [[ $code == 200 ]] && break
    fi
    alive "$DAEMON_PID" || daemon_died "the daemon exited before /ready was 200"
    (($(date +%s) < deadline)) || daemon_died "/ready not 200 within $START_TIMEOUT s"
    sleep 0.1
done
STATUS=$(pd status --json) || daemon_died "status --json failed"
PG_BIN_DAEMON=$(jq -r '.postgres.bin_dir' <<<"$STATUS")
PG_VERSION=$(jq -r '.postgres.version' <<<"$STATUS")
[[ $PG_BIN_DAEMON -ef $PG_BIN ]] ||
    log "warning: the daemon runs postgres from $PG_BIN_DAEMON, the old stack's tools come from $PG_BIN"

# libpq for the old stack and our own SQL: the daemon's private socket, superuser.
SOCK=$DATA/run/postgres
sockfile=$(find "$SOCK" -maxdepth 1 -name '.s.PGSQL.*' ! -name '*.lock' -print -quit)
[[ -n $sockfile ]] || daemon_died "no postgres socket in $SOCK"
PGPORT_=${sockfile##*.}
PASSFILE="$WORK/pgpass"
(
    umask 077
    printf '*:*:*:postgres:%s\n' "$(cat "$DATA/secrets/postgres-superuser.password")" >"$PASSFILE"
) || die "cannot write $PASSFILE"
pgc() { PGHOST=$SOCK PGPORT=$PGPORT_ PGUSER=postgres PGPASSFILE=$PASSFILE PGOPTIONS='-c client_min_messages=warning' "$@"; }
sql() { # sql DB SQL: one statement, unaligned output
    pgc "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"
}
settle() { # before each timed step: flush the previous step's writes, checkpoint
    sync
    sql postgres "CHECKPOINT" >/dev/null || die "CHECKPOINT failed"
}

# Exact row counts of every table of a database, one "schema.table=N" per line.
COUNTS_SQL="SELECT n.nspname || '.' || c.relname || '=' ||
  (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  AND (n.nspname, c.relname) <> ('ops', 'job_runs') -- every backup records itself there
ORDER BY 1"
counts() { sql "$1" "$COUNTS_SQL"; }

# ---------------------------------------------------------------------------
# CPU load from others (noisy machine: report it)

cpu_busy() { # percent busy over 1 s, measured while we run nothing
    local -a a b
    read -ra a </proc/stat
    sleep 1
    read -ra b </proc/stat
    local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
    local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
    echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}
BUSY_START=$(cpu_busy)
BENCH_START=$(date +%s)

# ---------------------------------------------------------------------------
# Data generation

cat >"$WORK/vocab.sql" <<'EOF'
-- ~4,400 words ranked by frequency: ~600 common English and business words
-- first, then made-up words of 2-4 syllables with common endings.
CREATE TEMP TABLE words AS
WITH common(w, ord) AS (
  SELECT w, ord FROM unnest(string_to_array(
  'the of and to a in is that for it as was with be by on not he this are or his from at which but have an they you were her she there been one all we their has would when if so no will more about can said out up them some could what into than other time only new then may do its these two like first also after over any our most where should made well before must through back years much down even because such good work way people many how those same being very us still each between long make might three under day while last never year off get great old another come since against go part used both world however without here few fact small place own case public take again point given less number days every although during though home within set around went end form once several later four whether important high week thing early month information customer account payment invoice order contract meeting call email proposal quote price discount renewal support issue ticket product service team project budget schedule delivery shipment client manager director office company market report review plan strategy sales lead deal pipeline stage revenue cost margin forecast quarter target goal priority status update follow request approval signature legal finance billing credit refund balance transfer bank currency tax rate fee total amount due date terms agreement license subscription trial demo onboarding training feedback complaint escalation resolution solution requirement feature integration migration deployment release version system platform data security compliance audit risk insurance warehouse inventory supplier vendor partner distributor region branch store location address phone website catalog brochure campaign promotion event conference visit lunch dinner coffee travel flight hotel expense receipt purchase procurement negotiation offer counteroffer acceptance rejection decision stakeholder executive board committee department operations logistics engineering marketing human resources legal counsel assistant coordinator analyst consultant specialist representative agent owner founder president chairman officer head lead senior junior interim regional national global local urgent pending confirmed cancelled delayed approved rejected signed sent received paid overdue partial final draft revised initial monthly quarterly annual weekly daily tomorrow yesterday today morning afternoon evening next previous upcoming recent current future asked mentioned agreed promised explained confirmed requested suggested noted discussed reviewed prepared shared attached forwarded scheduled rescheduled postponed completed started finished closed opened reopened resolved escalated assigned transferred called emailed wrote replied answered waiting expecting hoping planning considering evaluating comparing choosing preferring interested concerned happy unhappy satisfied frustrated impressed surprised worried cautious positive negative neutral strong weak clear unclear quick slow large small expensive cheap flexible strict simple complex',
  ' ')) WITH ORDINALITY AS t(w, ord)
),
syll(s) AS (
  SELECT unnest(string_to_array('ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo fu ga ge go gu la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo za ze zo an en in on ar er ir or al el il ol as es is os tr pr br cr gr pl bl cl fl st sp', ' '))
),
synth AS (
  SELECT DISTINCT ON (w) w FROM (
    SELECT (SELECT string_agg(s, '' ORDER BY random()) FROM (SELECT s FROM syll ORDER BY random() LIMIT 2 + (g % 3)) x)
           || (ARRAY['','','s','ed','ing','ion','er','ly','al','ment'])[1 + (g * 7) % 10] AS w
    FROM generate_series(1, 4000) g
  ) y
)
SELECT w, row_number() OVER (ORDER BY grp, r)::int AS rank FROM (
  SELECT w, 0 AS grp, ord::float8 AS r FROM common
  UNION ALL
  SELECT w, 1, random() FROM synth WHERE w NOT IN (SELECT w FROM common)
) z;
CREATE UNIQUE INDEX ON words (rank);
ANALYZE words;
EOF

cat >"$WORK/setup.sql" <<'EOF'
-- Tenants, six users each, the usual pipeline stages (run in one transaction).
SET session_replication_role = replica;
CREATE TEMP TABLE new_tenants (id uuid, name text, created_at timestamptz);
WITH ins AS (
  INSERT INTO tenancy.tenants (name, created_at)
  SELECT (ARRAY['Andes','Pacifico','Sierra','Aurora','Delta','Cumbre','Horizonte','Rio','Norte','Sol','Valle','Costa'])[1 + (g - 1) % 12]
         || ' ' || (ARRAY['Distribuciones','Servicios','Comercial','Logistica','Tecnologia','Consultores','Importaciones','Alimentos'])[1 + ((g - 1) / 12 + g) % 8]
         || ' ' || (ARRAY['S.A.','SAS','Ltda.','S.A. de C.V.','SpA','S.R.L.'])[1 + g % 6],
         timestamptz '2022-01-01' + random() * interval '700 days'
  FROM generate_series(1, :tenants) g
  RETURNING id, name, created_at)
INSERT INTO new_tenants SELECT * FROM ins;
INSERT INTO iam.users (tenant_id, email, name, role, password_hash, created_at, updated_at)
SELECT t.id, lower(fn) || '.' || lower(ln) || u || '@' || regexp_replace(lower(split_part(t.name, ' ', 1) || split_part(t.name, ' ', 2)), '[^a-z]', '', 'g') || '.example',
       fn || ' ' || ln, (ARRAY['owner','admin','agent','agent','agent','viewer'])[u],
       '$argon2id$v=19$m=19456,t=2,p=1$' || encode(gen_random_bytes(16), 'base64') || '$' || encode(gen_random_bytes(32), 'base64'),
       t.created_at, t.created_at + random() * interval '300 days'
FROM new_tenants t, generate_series(1, 6) u,
     LATERAL (SELECT (ARRAY['Ana','Luis','Maria','Jose','Carmen','Diego','Lucia','Pedro','Sofia','Jorge','Elena','Pablo'])[1 + floor(random() * 12)::int + 0 * u] AS fn,
                     (ARRAY['Garcia','Rodriguez','Lopez','Martinez','Perez','Gomez','Diaz','Torres','Ramirez','Flores','Rojas','Vargas'])[1 + floor(random() * 12)::int + 0 * u] AS ln) n;
INSERT INTO sales.pipeline_stages (tenant_id, name, position, kind, created_at)
SELECT t.id, s.name, s.pos, s.kind, t.created_at
FROM new_tenants t,
     (VALUES ('Lead', 1, 'open'), ('Qualified', 2, 'open'), ('Proposal', 3, 'open'),
             ('Negotiation', 4, 'open'), ('Won', 5, 'won'), ('Lost', 6, 'lost')) s(name, pos, kind);
EOF

cat >"$WORK/part.sql" <<'EOF'
-- One generation session (one transaction): all the data of the generated
-- tenants with (rank % :parts) = :part. Variables: pre (the tenants that
-- existed before, as quoted literals), part, parts, seed, customers,
-- contacts, deals, activities, payments (this session's row counts).
\set ON_ERROR_STOP 1
-- No triggers: ids are consistent by construction (every foreign key is
-- checked again when a restore adds the constraints), and the audit rows the
-- triggers would write are generated below, with realistic actors and times.
SET session_replication_role = replica;
-- Within the daemon's default postgres_memory (512 MiB, its cgroup's limit
-- where the host allows one): 1GB here got postgres OOM-killed.
SET work_mem = '32MB';
SET synchronous_commit = off;
SELECT setseed(:seed);
\ir vocab.sql

-- n texts of random length minlen..maxlen characters (a share pnull left
-- out): words drawn with Zipf-like frequencies (rank ~ N * u^3), sentences,
-- commas, line breaks, and some amounts, order numbers, dates and counts.
CREATE FUNCTION pg_temp.texts(n int, minlen int, maxlen int, pnull float8)
RETURNS TABLE (g int, t text) LANGUAGE sql VOLATILE AS $f$
  SELECT s.g, string_agg(
           CASE WHEN r.x < 0.006 THEN '$' || to_char(random() * 20000, 'FM99,990.00')
                WHEN r.x < 0.012 THEN '#' || (10000 + floor(random() * 990000))::int
                WHEN r.x < 0.016 THEN to_char(date '2023-01-01' + floor(random() * 1000)::int, 'YYYY-MM-DD')
                WHEN r.x < 0.022 THEN floor(1 + random() * 250)::int::text
                WHEN r.y < 0.065 THEN initcap(w.w)
                ELSE w.w END
           || CASE WHEN r.y < 0.065 THEN '.' WHEN r.y < 0.1 THEN ',' WHEN r.y < 0.104 THEN E'.\n' WHEN r.y < 0.107 THEN ':' WHEN r.y < 0.109 THEN '?' ELSE '' END,
           ' ')
  FROM (SELECT gs AS g, greatest(1, (minlen + random() * (maxlen - minlen)) / 7.3)::int AS nw
        FROM generate_series(1, n) gs WHERE random() >= pnull) s
  CROSS JOIN LATERAL (SELECT 1 + floor((SELECT count(*) FROM words) * random() ^ 3)::int AS k,
                             random() AS x, random() AS y
                      FROM generate_series(1, s.nw)) r
  JOIN words w ON w.rank = r.k
  GROUP BY s.g
$f$;

CREATE TEMP TABLE my_tenants AS
SELECT row_number() OVER (ORDER BY id)::int AS idx, id, created_at FROM (
  SELECT id, created_at, row_number() OVER (ORDER BY name) AS rn FROM tenancy.tenants
  WHERE id::text <> ALL (ARRAY[:pre]::text[])) t
WHERE rn % :parts = :part;
CREATE TEMP TABLE my_users AS
SELECT tenant_id, row_number() OVER (PARTITION BY tenant_id ORDER BY id)::int AS k, id
FROM iam.users WHERE tenant_id IN (SELECT id FROM my_tenants);
CREATE TEMP TABLE my_stages AS
SELECT tenant_id, position AS pos, id FROM sales.pipeline_stages WHERE tenant_id IN (SELECT id FROM my_tenants);

-- Word lists: psql variables that expand to constant arrays (folded at plan
-- time, so no per-row detoasting as with arrays read from a table).
\set FN '(string_to_array(''Ana Luis Maria Jose Carmen Diego Lucia Pedro Sofia Jorge Elena Pablo Valentina Mateo Camila Santiago Isabella Sebastian Gabriela Nicolas Daniela Alejandro Mariana Andres Paula Felipe Laura Ricardo Fernanda Javier Natalia Carlos Adriana Miguel Beatriz Rafael Claudia Eduardo Patricia Hector Veronica Oscar Monica Ruben Silvia Ramon Teresa Victor Gloria Ignacio Rosa Emilio Julia Tomas Alicia Manuel Irene Sergio Lorena Alberto Pilar Raul Esther Marcos Noelia Hugo Olga Ivan Ines Gonzalo Celia Arturo Rocio Enrique Susana Francisco Eva Guillermo Marta John Emily Michael Sarah David Jessica James Ashley Robert Jennifer William Amanda Richard Melissa Thomas Nicole Charles Stephanie Daniel Rebecca Matthew Rachel Anthony Hannah Mark Olivia Steven Chloe Kevin Grace Brian Lily Wei Mei Hiroshi Yuki Priya Arjun Fatima Omar Lena Lukas Anna Jonas'', '' ''))'
\set LN '(string_to_array(''Garcia Rodriguez Lopez Martinez Perez Gomez Diaz Torres Ramirez Flores Rojas Vargas Morales Castro Ortiz Silva Nunez Romero Herrera Medina Aguilar Jimenez Ruiz Alvarez Mendoza Moreno Gutierrez Chavez Reyes Cruz Ramos Munoz Vega Castillo Suarez Guerrero Rios Sandoval Contreras Molina Dominguez Navarro Campos Cabrera Pena Fuentes Carrillo Espinoza Salazar Ibarra Cortes Soto Delgado Leon Marquez Acosta Velasco Paredes Cardenas Villalobos Quintero Miranda Bravo Zamora Escobar Figueroa Benitez Valencia Arias Pacheco Lara Mejia Salinas Cervantes Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Moore Jackson Martin Lee Thompson White Harris Clark Lewis Walker Hall Young King Wright Scott Green Baker Adams Nelson Hill Campbell Mitchell Roberts Carter Phillips Evans Turner Parker Collins Edwards Stewart Morris Murphy Cook Rogers Chen Wang Nguyen Kim Patel Singh Muller Schmidt Schneider Fischer Weber Rossi Russo Ferrari Esposito Dubois Laurent Moreau Silva Santos Oliveira Costa'', '' ''))'
\set ADJ '(string_to_array(''Global Andina Pacific Atlantic Central Northern Southern Premier United Integral Rapid Smart Green Blue Golden Silver Royal Modern Prime Alpha Nova Delta Vertex Summit Horizon Pioneer Dynamic Strategic Creative Digital Advanced Precision Quantum Urban Coastal Mountain Valley River Crown Eagle Condor Jaguar Puma Falcon Phoenix Titan Atlas Orion Apex Zenith Nexus Vector Pixel Cloud Solar Terra Agro Bio Eco Medi Tele Info Inter Trans Multi'', '' ''))'
\set NOUN '(string_to_array(''Logistics Foods Imports Exports Solutions Systems Consulting Services Motors Textiles Pharma Labs Construction Engineering Energy Mining Farms Coffee Cacao Flowers Furniture Electronics Software Networks Media Marketing Retail Wholesale Trading Capital Partners Ventures Holdings Industries Manufacturing Packaging Plastics Metals Chemicals Health Dental Clinic Travel Tours Hotels Restaurants Bakery Dairy Beverages Apparel Footwear Sports Education Academy Realty Properties Insurance Finance Transport Freight Shipping Couriers Security Cleaning Printing Design Studio Analytics Robotics Automation'', '' ''))'
\set SUFFIX '(string_to_array(''S.A.|SAS|Ltda.|S.A. de C.V.|SpA|S.R.L.|Inc.|LLC|Ltd|GmbH|Group|& Co.|Corp.|SL'', ''|''))'
\set FREEMAIL '(string_to_array(''gmail.com hotmail.com outlook.com yahoo.com icloud.com proton.me live.com'', '' ''))'
\set TLD '(string_to_array(''com com com net co mx cl pe ar com.co com.mx com.ar com.br es io'', '' ''))'
\set TITLES '(string_to_array(''CEO|CFO|COO|CTO|Owner|Founder|Purchasing Manager|Procurement Lead|Accounts Payable|Finance Director|Operations Manager|Sales Director|Marketing Manager|IT Manager|Office Manager|Head of Logistics|Plant Manager|Buyer|Controller|Legal Counsel|HR Director|Project Manager|Store Manager|Regional Manager|Assistant|Analyst|Engineer|Consultant'', ''|''))'
\set PRODUCTS '(string_to_array(''Annual license|Premium plan|Starter plan|Enterprise plan|Implementation|Onboarding package|Support renewal|Consulting hours|Hardware bundle|Training workshop|Custom integration|Data migration|Expansion seats|Maintenance contract|Pilot project|Marketing services|Shipping services|Supply agreement|Framework contract|Spare parts'', ''|''))'
\set CURRENCIES '(string_to_array(''USD USD USD USD EUR MXN MXN COP COP CLP PEN ARS BRL GBP'', '' ''))'
CREATE FUNCTION pg_temp.pick(a text[]) RETURNS text LANGUAGE sql VOLATILE AS $$ SELECT a[1 + floor(random() * array_length(a, 1))::int] $$;

-- customers: tenants of skewed sizes; people and companies from the lists
-- (some companies named after a made-up word), e-mail at the company's
-- domain or a free-mail one, phones, notes of prose for 70% ---------------
CREATE TEMP TABLE cust AS
SELECT g, gen_random_uuid() AS id, tn.id AS tenant_id, fn, ln, company, domain,
       tn.created_at + random() * (now() - tn.created_at) AS created_at
FROM (
  SELECT g, pg_temp.pick(:FN) AS fn, pg_temp.pick(:LN) AS ln,
         1 + floor((SELECT count(*) FROM my_tenants) * random() ^ 1.6)::int AS tidx,
         random() AS cr, 600 + floor(random() * 3800)::int AS crank
  FROM generate_series(1, :customers) g
) s
JOIN my_tenants tn ON tn.idx = s.tidx
CROSS JOIN LATERAL (
  SELECT CASE WHEN s.cr < 0.15 THEN NULL
              WHEN s.cr < 0.40 THEN s.ln || ' ' || (ARRAY['y Asociados','Hermanos','& Sons','e Hijos','Family','Brothers'])[1 + floor(random() * 6)::int] || ' ' || pg_temp.pick(:SUFFIX)
              WHEN s.cr < 0.80 THEN pg_temp.pick(:ADJ) || ' ' || pg_temp.pick(:NOUN) || ' ' || pg_temp.pick(:SUFFIX)
              ELSE initcap((SELECT w FROM words WHERE rank = s.crank)) || ' ' || pg_temp.pick(:NOUN) || ' ' || pg_temp.pick(:SUFFIX)
         END AS company
) co
CROSS JOIN LATERAL (
  SELECT CASE WHEN co.company IS NULL THEN pg_temp.pick(:FREEMAIL)
              ELSE regexp_replace(lower(split_part(co.company, ' ', 1) || split_part(co.company, ' ', 2)), '[^a-z]', '', 'g')
                   || '.' || pg_temp.pick(:TLD) END AS domain
) d;
CREATE TEMP TABLE notes AS SELECT * FROM pg_temp.texts(:customers, 50, 2000, 0.3);
INSERT INTO customers.customers (id, tenant_id, name, email, phone, company, notes, archived_at, version, created_at, updated_at)
SELECT c.id, c.tenant_id, c.fn || ' ' || c.ln,
       CASE WHEN r < 0.92 THEN lower(CASE WHEN r < 0.3 THEN left(c.fn, 1) || c.ln WHEN r < 0.6 THEN c.fn || '.' || c.ln WHEN r < 0.75 THEN c.fn || '_' || c.ln || floor(random() * 99)::int ELSE c.fn || c.ln || floor(random() * 9999)::int END) || '@' || c.domain END,
       CASE WHEN r < 0.85 THEN '+' || (ARRAY['1','52','57','56','51','54','55','34','44'])[1 + floor(random() * 9)::int] || ' ' || (100 + floor(random() * 900))::int || ' ' || (100 + floor(random() * 900))::int || ' ' || (1000 + floor(random() * 9000))::int END,
       c.company, n.t,
       CASE WHEN random() < 0.04 THEN c.created_at + random() * (now() - c.created_at) END,
       v, c.created_at, CASE WHEN v > 1 THEN c.created_at + random() * (now() - c.created_at) ELSE c.created_at END
FROM cust c LEFT JOIN notes n USING (g)
CROSS JOIN LATERAL (SELECT random() + 0 * c.g AS r, CASE WHEN random() < 0.2 THEN 2 + floor(random() * 3)::int ELSE 1 END AS v) x;
DROP TABLE notes;

-- contacts ----------------------------------------------------------------
INSERT INTO customers.contacts (tenant_id, customer_id, name, email, phone, title, version, created_at, updated_at)
SELECT c.tenant_id, c.id, s.fn || ' ' || s.ln,
       CASE WHEN random() < 0.9 THEN lower(s.fn || '.' || s.ln) || '@' || c.domain END,
       CASE WHEN random() < 0.7 THEN '+' || (ARRAY['1','52','57','56','51','54'])[1 + floor(random() * 6)::int] || ' ' || (100 + floor(random() * 900))::int || ' ' || (1000000 + floor(random() * 9000000))::int END,
       CASE WHEN random() < 0.8 THEN title END, 1, ts, ts
FROM (
  SELECT 1 + floor(random() * :customers)::int AS g,
         pg_temp.pick(:FN) AS fn, pg_temp.pick(:LN) AS ln, pg_temp.pick(:TITLES) AS title, random() AS rt
  FROM generate_series(1, :contacts)
) s JOIN cust c USING (g)
CROSS JOIN LATERAL (SELECT c.created_at + s.rt * (now() - c.created_at) AS ts) t;

-- deals (version = stage position: each stage change was an update) -------
CREATE TEMP TABLE dl AS
SELECT k, gen_random_uuid() AS id, c.tenant_id, c.id AS customer_id, c.company, c.ln,
       c.created_at + random() * (now() - c.created_at) AS created_at, s.pos
FROM (SELECT k, 1 + floor(random() * :customers)::int AS g,
             (ARRAY[1,1,1,2,2,3,3,4,5,5,5,6,6])[1 + floor(random() * 13)::int] AS pos
      FROM generate_series(1, :deals) k) s JOIN cust c USING (g);
INSERT INTO sales.deals (id, tenant_id, customer_id, stage_id, title, amount_minor, currency, expected_close, archived_at, version, created_at, updated_at)
SELECT d.id, d.tenant_id, d.customer_id, st.id,
       left(coalesce(d.company, d.ln) || ' - ' || pg_temp.pick(:PRODUCTS)
            || CASE WHEN random() < 0.5 THEN ' ' || (2023 + floor(random() * 3))::int || CASE WHEN random() < 0.5 THEN ' Q' || (1 + floor(random() * 4))::int ELSE '' END
                    WHEN random() < 0.5 THEN ' (' || (5 + floor(random() * 200))::int || ' seats)' ELSE '' END, 200),
       (round(exp(7 + random() * 7)) * 100)::bigint,
       pg_temp.pick(:CURRENCIES),
       CASE WHEN random() < 0.85 THEN (d.created_at + random() * interval '240 days')::date END,
       CASE WHEN random() < 0.05 THEN d.created_at + random() * (now() - d.created_at) END,
       d.pos, d.created_at, d.created_at + random() * (now() - d.created_at)
FROM dl d JOIN my_stages st ON st.tenant_id = d.tenant_id AND st.pos = d.pos;

-- activities: 45% on a deal; bodies of prose for 92% ----------------------
CREATE TEMP TABLE bodies AS SELECT * FROM pg_temp.texts(:activities, 50, 2000, 0.08);
INSERT INTO activities.activities (tenant_id, customer_id, deal_id, kind, subject, body, due_at, done, version, created_at, updated_at)
SELECT a.tenant_id, a.customer_id, a.deal_id, a.kind,
       left(CASE a.kind
              WHEN 'call' THEN (ARRAY['Call with','Phone call:','Follow-up call with','Intro call with','Call back'])[1 + floor(random() * 5)::int] || ' ' || a.who
              WHEN 'task' THEN (ARRAY['Send','Prepare','Review','Update','Confirm','Schedule','Chase'])[1 + floor(random() * 7)::int] || ' ' || lower(a.what) || ' for ' || a.who
              ELSE (ARRAY['Notes:','Meeting notes -','Re:','Summary:','Visit to'])[1 + floor(random() * 5)::int] || ' ' || a.what || ' ' || a.who
            END, 200),
       b.t,
       CASE WHEN a.kind = 'task' THEN a.created_at + random() * interval '30 days' END,
       a.kind <> 'task' OR random() < 0.6, 1, a.created_at, a.created_at + random() * interval '20 days'
FROM (
  SELECT s.g, coalesce(d.tenant_id, c.tenant_id) AS tenant_id, coalesce(d.customer_id, c.id) AS customer_id, d.id AS deal_id,
         (ARRAY['note','note','call','call','call','task','task'])[1 + floor(random() * 7)::int] AS kind,
         coalesce(d.company, c.company, c.fn || ' ' || c.ln) AS who,
         pg_temp.pick(:PRODUCTS) AS what,
         coalesce(d.created_at, c.created_at) + random() * (now() - coalesce(d.created_at, c.created_at)) AS created_at
  FROM (SELECT g, CASE WHEN random() < 0.45 THEN 1 + floor(random() * :deals)::int END AS k,
               1 + floor(random() * :customers)::int AS cg
        FROM generate_series(1, :activities) g) s
  LEFT JOIN dl d ON d.k = s.k
  JOIN cust c ON c.g = s.cg
) a LEFT JOIN bodies b USING (g);
DROP TABLE bodies;

-- payments ----------------------------------------------------------------
CREATE TEMP TABLE pdesc AS SELECT * FROM pg_temp.texts(:payments, 20, 300, 0.5);
INSERT INTO payments.payments (tenant_id, customer_id, kind, description, amount_minor, currency, status, reference, paid_at, version, created_at, updated_at)
SELECT c.tenant_id, c.id, CASE WHEN random() < 0.6 THEN 'link' ELSE 'record' END,
       left('Invoice INV-' || to_char(ts, 'YYYY') || '-' || lpad(floor(random() * 99999)::int::text, 5, '0') || ': '
            || pg_temp.pick(:PRODUCTS) || coalesce(' - ' || t.t, ''), 500),
       (round(exp(6 + random() * 7)) * 100)::bigint,
       pg_temp.pick(:CURRENCIES),
       st, CASE WHEN random() < 0.9 THEN (ARRAY['pi_','ch_','TRX-','OP'])[1 + floor(random() * 4)::int] || encode(gen_random_bytes(12), 'hex') END,
       CASE WHEN st IN ('paid', 'refunded') THEN ts + random() * interval '15 days' END,
       CASE WHEN st = 'pending' THEN 1 WHEN st = 'refunded' THEN 3 ELSE 2 END, ts, ts + random() * interval '20 days'
FROM (SELECT g, 1 + floor(random() * :customers)::int AS cg,
             (ARRAY['paid','paid','paid','paid','paid','pending','pending','failed','cancelled','refunded'])[1 + floor(random() * 10)::int] AS st
      FROM generate_series(1, :payments) g) s
JOIN cust c ON c.g = s.cg
LEFT JOIN pdesc t ON t.g = s.g
CROSS JOIN LATERAL (SELECT c.created_at + random() * (now() - c.created_at) AS ts) x;
DROP TABLE pdesc;

-- audit: what audit.record() writes, in time order: a 'create' event per
-- row (jsonb snapshot), 'update' events with before/after for the rows that
-- changed; a random user of the tenant (or none), a request id -------------
INSERT INTO audit.events (tenant_id, actor_id, action, entity, entity_id, before, after, request_id, at)
SELECT e.tenant_id, CASE WHEN e.k <= 6 THEN u.id END, e.action, e.entity, e.entity_id, e.before, e.after,
       CASE WHEN random() < 0.97 THEN encode(gen_random_bytes(8), 'hex') END, e.at
FROM (
  SELECT tenant_id, 'create' AS action, 'customers.customers' AS entity, id AS entity_id, NULL::jsonb AS before, to_jsonb(r) AS after, created_at AS at, floor(1 + random() * 7)::int AS k
    FROM customers.customers r WHERE tenant_id IN (SELECT id FROM my_tenants)
  UNION ALL
  SELECT tenant_id, 'update', 'customers.customers', id, to_jsonb(r) || jsonb_build_object('version', version - 1, 'updated_at', created_at, 'phone', NULL), to_jsonb(r), updated_at, floor(1 + random() * 7)::int
    FROM customers.customers r WHERE tenant_id IN (SELECT id FROM my_tenants) AND version > 1
  UNION ALL
  SELECT tenant_id, 'create', 'customers.contacts', id, NULL, to_jsonb(r), created_at, floor(1 + random() * 7)::int
    FROM customers.contacts r WHERE tenant_id IN (SELECT id FROM my_tenants)
  UNION ALL
  SELECT tenant_id, 'create', 'sales.deals', id, NULL, to_jsonb(r) || jsonb_build_object('version', 1, 'updated_at', created_at), created_at, floor(1 + random() * 7)::int
    FROM sales.deals r WHERE tenant_id IN (SELECT id FROM my_tenants)
  UNION ALL
  SELECT r.tenant_id, 'update', 'sales.deals', r.id, to_jsonb(r) || jsonb_build_object('stage_id', s.id, 'version', r.version - 1), to_jsonb(r), r.updated_at, floor(1 + random() * 7)::int
    FROM sales.deals r JOIN my_stages s ON s.tenant_id = r.tenant_id AND s.pos = r.version - 1 WHERE r.version > 1
  UNION ALL
  SELECT tenant_id, 'create', 'activities.activities', id, NULL, to_jsonb(r) || jsonb_build_object('done', false), created_at, floor(1 + random() * 7)::int
    FROM activities.activities r WHERE tenant_id IN (SELECT id FROM my_tenants)
  UNION ALL
  SELECT tenant_id, 'update', 'activities.activities', id, to_jsonb(r) || jsonb_build_object('done', false, 'updated_at', created_at), to_jsonb(r), updated_at, floor(1 + random() * 7)::int
    FROM activities.activities r WHERE tenant_id IN (SELECT id FROM my_tenants) AND kind = 'task' AND done
  UNION ALL
  SELECT tenant_id, 'create', 'payments.payments', id, NULL, to_jsonb(r) || jsonb_build_object('status', 'pending', 'paid_at', NULL, 'version', 1), created_at, floor(1 + random() * 7)::int
    FROM payments.payments r WHERE tenant_id IN (SELECT id FROM my_tenants)
  UNION ALL
  SELECT tenant_id, 'update', 'payments.payments', id, to_jsonb(r) || jsonb_build_object('status', 'pending', 'paid_at', NULL, 'version', 1), to_jsonb(r), coalesce(paid_at, updated_at), floor(1 + random() * 7)::int
    FROM payments.payments r WHERE tenant_id IN (SELECT id FROM my_tenants) AND status <> 'pending'
) e
LEFT JOIN my_users u ON u.tenant_id = e.tenant_id AND u.k = e.k
ORDER BY e.at;
EOF

scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); print (v < 1 ? 1 : v) }'; }
PARTS=2
TENANTS=24
log "generating the data (SCALE=$SCALE, $PARTS sessions)"
t0=$(now_ns)
PRE=$(sql "$DB" "SELECT coalesce(string_agg(quote_literal(id::text), ','), '''''') FROM tenancy.tenants") ||
    die "cannot read the tenants"
pgc "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -1 -d "$DB" -v tenants=$TENANTS -f "$WORK/setup.sql" \
    >"$WORK/gen-setup.log" 2>&1 || {
    cat "$WORK/gen-setup.log" >&2
    die "generating tenants failed"
}
declare -a GEN_PIDS=()
for ((part = 0; part < PARTS; part++)); do
    pgc "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -1 -d "$DB" \
        -v pre="$PRE" -v part=$part -v parts=$PARTS -v seed="0.$((part + 1))" \
        -v customers="$(scaled 10000)" -v contacts="$(scaled 20000)" -v deals="$(scaled 12000)" \
        -v activities="$(scaled 45000)" -v payments="$(scaled 16000)" \
        -f "$WORK/part.sql" >"$WORK/gen-$part.log" 2>&1 </dev/null &
    GEN_PIDS+=($!)
    CHILDREN[$!]=psql
done
for ((part = 0; part < PARTS; part++)); do
    pid=${GEN_PIDS[part]}
    wait "$pid"
    rc=$?
    unset "CHILDREN[$pid]"
    ((rc == 0)) || {
        tail -n 20 "$WORK/gen-$part.log" >&2
        die "generation session $part failed (status $rc)"
    }
done
GEN_MS=$(ms_since "$t0")
log "  generated in $((GEN_MS / 1000)) s; VACUUM (ANALYZE) and CHECKPOINT"
t0=$(now_ns)
sql "$DB" "VACUUM (ANALYZE)" >/dev/null || die "VACUUM failed"
settle
VACUUM_MS=$(ms_since "$t0")
DB_BYTES=$(sql "$DB" "SELECT pg_database_size(current_database())") || die "pg_database_size failed"
DB_MIB=$((DB_BYTES / 1048576))
SOURCE_COUNTS=$(counts "$DB") || die "counting rows failed"
TEXT_MIB=$(sql "$DB" "SELECT round((coalesce((SELECT sum(length(notes)) FROM customers.customers), 0) + coalesce((SELECT sum(length(body)) FROM activities.activities), 0)) / 1048576.0)")
AUDIT_MIB=$(sql "$DB" "SELECT round(pg_total_relation_size('audit.events') / 1048576.0)")
log "  database: $DB_MIB MiB (pg_database_size); $TEXT_MIB MiB of notes and activity bodies; audit.events $AUDIT_MIB MiB"
((DB_MIB >= MIN_DB_MB)) || die "the database is only $DB_MIB MiB (< MIN_DB_MB=$MIN_DB_MB): raise SCALE"

if [[ -n ${HOLD:-} ]]; then
    {
        printf 'PD_BIN=%q\nCONFIG=%q\nDATA=%q\nDB=%q\nPG_BIN=%q\n' "$PD_BIN" "$CONFIG" "$DATA" "$DB" "$PG_BIN"
        printf 'export PGHOST=%q PGPORT=%q PGUSER=postgres PGPASSFILE=%q\n' "$SOCK" "$PGPORT_" "$PASSFILE"
    } >"$HOLD" || die "cannot write HOLD=$HOLD"
    log "holding: the daemon and its data are described in $HOLD; delete it to go on"
    for ((i = 0; i < 7200; i++)); do
        [[ -e $HOLD ]] || break
        alive "$DAEMON_PID" || daemon_died "the daemon exited while holding"
        sleep 1
    done
    rm -f -- "$HOLD"
fi

# ---------------------------------------------------------------------------
# Measurements

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
secs() { awk -v m="$1" 'BEGIN { printf "%.2f", m / 1000 }'; }

ours_backup() { # ours_backup LABEL: sets OUT_MS, OUT_BYTES, OUT_NAME, OUT_PATH
    local out t0
    settle
    t0=$(now_ns)
    out=$(pd backup create --name "$1") || daemon_died "backup create --name $1 failed"
    OUT_MS=$(ms_since "$t0")
    IFS=$'\t' read -r OUT_NAME OUT_PATH <<<"$out"
    [[ -f $OUT_PATH ]] || die "backup create printed '$out': no such file"
    OUT_BYTES=$(stat -c %s "$OUT_PATH")
}

old_backup() { # old_backup FILE: sets OUT_MS, OUT_BYTES
    local t0
    settle
    t0=$(now_ns)
    pgc timeout "$STEP_TIMEOUT" "$PG_BIN/pg_dump" -d "$DB" | gzip >"$1" || die "pg_dump | gzip failed"
    OUT_MS=$(ms_since "$t0")
    OUT_BYTES=$(stat -c %s "$1")
}

check_counts() { # check_counts DB WHAT: the database holds exactly the generated rows
    local got
    got=$(counts "$1") || die "counting rows in $1 failed"
    [[ $got == "$SOURCE_COUNTS" ]] || {
        diff <(echo "$SOURCE_COUNTS") <(echo "$got") >&2
        die "$2: the restored database $1 does not hold the generated rows"
    }
}

declare -a OURS_B_MS=() OURS_B_BYTES=() OLD_B_MS=() OLD_B_BYTES=()
# Warm-up, untimed: the first dump after the bulk load ran up to 2x slower
# than the next ones (both stacks); a backup in service reads a settled database.
t0=$(now_ns)
pgc "$PG_BIN/pg_dump" -Fc -Z0 -d "$DB" >/dev/null || die "warm-up pg_dump failed"
log "warm-up: pg_dump -Fc -Z0 >/dev/null, untimed ($(awk -v m="$(ms_since "$t0")" 'BEGIN { printf "%.2f", m / 1000 }') s)"
log "backups: $RUNS runs, ours and the old stack alternating"
for ((i = 1; i <= RUNS; i++)); do
    ours_backup "bench-$i"
    OURS_B_MS+=("$OUT_MS")
    OURS_B_BYTES+=("$OUT_BYTES")
    ((i == 1)) && RESTORE_NAME=$OUT_NAME RESTORE_PATH=$OUT_PATH
    old_backup "$WORK/old-$i.sql.gz"
    OLD_B_MS+=("$OUT_MS")
    OLD_B_BYTES+=("$OUT_BYTES")
    ((i > 1)) && rm -f -- "$WORK/old-$i.sql.gz" # the restores use run 1's file
    log "$(printf '  run %d/%d: ours %s s, %s MiB; old %s s, %s MiB' "$i" "$RUNS" \
        "$(secs "${OURS_B_MS[-1]}")" "$(mib "${OURS_B_BYTES[-1]}")" "$(secs "${OLD_B_MS[-1]}")" "$(mib "${OLD_B_BYTES[-1]}")")"
done
OLD_FILE="$WORK/old-1.sql.gz"

declare -a SEP_MS=() OURS_R_MS=() SERVE_MS=() SAFETY_MS=() OLD_R_MS=()
log "restores: $RUNS runs; each: a backup of the current data, ours (restore $RESTORE_NAME), old (run 1's .sql.gz)"
for ((i = 1; i <= RUNS; i++)); do
    ours_backup "sep-$i"
    SEP_MS+=("$OUT_MS")

    settle
    t0=$(now_ns)
    out=$(pd restore "$RESTORE_NAME" --yes) || daemon_died "restore $RESTORE_NAME failed"
    OURS_R_MS+=("$(ms_since "$t0")")
    # "restored NAME; serving it again after 12.3 s" (the API's downtime),
    # then the safety backup written from the database set aside.
    serve=$(sed -n 's/.*serving it again after \([0-9.]*\) s.*/\1/p' <<<"$out")
    [[ -n $serve ]] || die "restore printed no 'serving it again after': $out"
    SERVE_MS+=("$(awk -v s="$serve" 'BEGIN { printf "%d", s * 1000 }')")
    safety=$(sed -n 's/.* in backup \([^ ]*\).*/\1/p' <<<"$out")
    SAFETY_MS+=("$(jq -r '.duration_ms' "$DATA/backups/$safety.json" 2>/dev/null || echo 0)")
    check_counts "$DB" "ours, run $i"

    if ! sql postgres "DROP DATABASE IF EXISTS oldstack_restore" >/dev/null ||
        ! sql postgres "CREATE DATABASE oldstack_restore" >/dev/null; then
        die "cannot create the database oldstack_restore"
    fi
    settle
    t0=$(now_ns)
    gunzip -c "$OLD_FILE" | pgc timeout "$STEP_TIMEOUT" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d oldstack_restore \
        >/dev/null 2>"$WORK/old-restore.err" || {
        tail -n 20 "$WORK/old-restore.err" >&2
        die "gunzip | psql failed"
    }
    OLD_R_MS+=("$(ms_since "$t0")")
    check_counts oldstack_restore "old stack, run $i"
    sql postgres "DROP DATABASE oldstack_restore" >/dev/null || die "cannot drop oldstack_restore"
    log "$(printf '  run %d/%d: ours serving again after %s s, %s s with the safety backup (a backup of the current data alone %s s; the safety backup %s s); old %s s' "$i" "$RUNS" \
        "$(secs "${SERVE_MS[-1]}")" "$(secs "${OURS_R_MS[-1]}")" "$(secs "${SEP_MS[-1]}")" "$(secs "${SAFETY_MS[-1]}")" "$(secs "${OLD_R_MS[-1]}")")"
done

# ---------------------------------------------------------------------------
# Where the time goes (once each)

if [[ $DIAG == 1 ]]; then
    log "parts, once each"
    diag() { # diag VAR CMD...: time a command (run by bash -c, with our libpq settings)
        local _t0 _var=$1
        shift
        settle
        _t0=$(now_ns)
        pgc timeout "$STEP_TIMEOUT" bash -o pipefail -c "$*" || die "diagnostic step failed: $*"
        printf -v "$_var" '%s' "$(ms_since "$_t0")"
        log "  $(secs "${!_var}") s  $*"
    }
    RAW="$WORK/raw.dump"
    PLAIN="$WORK/plain.sql"
    settle
    t0=$(now_ns)
    counts "$DB" >/dev/null || die "counting rows failed"
    D_COUNT=$(ms_since "$t0")
    log "  $(secs "$D_COUNT") s  exact row counts of every table (ours counts them in the backup's snapshot)"
    diag D_DUMP "'$PG_BIN/pg_dump' -Fc -Z0 -d '$DB' -f '$RAW'"
    RAW_BYTES=$(stat -c %s "$RAW")
    diag D_ZSTD "zstd -q -3 -T2 -c '$RAW' >'$RAW.zst'"
    ZSTD_BYTES=$(stat -c %s "$RAW.zst")
    rm -f -- "$RAW.zst"
    diag D_PIPE "'$PG_BIN/pg_dump' -Fc -Z0 -d '$DB' | zstd -q -3 -T2 >'$RAW.zst'"
    rm -f -- "$RAW.zst"
    diag D_VERIFY "PAGODIRECTO_BACKUP__SCHEDULE= PAGODIRECTO_BACKUP__DRILL= '$PD_BIN' --config '$CONFIG' --data-dir '$DATA' backup verify '$RESTORE_NAME' >/dev/null"
    diag D_READBACK "sha256sum '$RESTORE_PATH' >/dev/null && zstd -dc '$RESTORE_PATH' >/dev/null"
    diag D_PLAIN "'$PG_BIN/pg_dump' -d '$DB' -f '$PLAIN'"
    PLAIN_BYTES=$(stat -c %s "$PLAIN")
    diag D_GZIP "gzip -c '$PLAIN' >/dev/null"
    diag D_GUNZIP "gunzip -c '$OLD_FILE' >/dev/null"
    sql postgres "CREATE DATABASE diag_restore" >/dev/null || die "cannot create diag_restore"
    # Its statements' durations go to the server log (the daemon's output).
    log_mark=$(($(wc -l <"$DAEMON_LOG") + 1))
    diag D_PGRESTORE "PGOPTIONS='-c log_min_duration_statement=0' zstd -dc '$RESTORE_PATH' | PGOPTIONS='-c log_min_duration_statement=0' '$PG_BIN/pg_restore' --exit-on-error --single-transaction --no-password -d diag_restore"
    SLOWEST=$(tail -n "+$log_mark" "$DAEMON_LOG" |
        sed -n 's/.*duration: \([0-9.]*\) ms  statement: \(.*\)/\1\t\2/p' |
        sort -t$'\t' -k1,1 -rn | head -n 6 |
        awk -F'\t' '{ s = $2; gsub(/[[:space:]]+/, " ", s); printf "    %7.2f s  %s\n", $1 / 1000, substr(s, 1, 80) }')
    check_counts diag_restore "zstd -dc | pg_restore"
    sql postgres "DROP DATABASE diag_restore" >/dev/null || die "cannot drop diag_restore"
    # COPY of the large jsonb/text values is mostly pglz (TOAST) compression
    # in the server: the same restore with lz4 TOAST compression (PG14+, a
    # session setting here; the appliance could set it in pagodirecto.conf).
    sql postgres "CREATE DATABASE diag_restore" >/dev/null || die "cannot create diag_restore"
    diag D_PGRESTORE_LZ4 "PGOPTIONS='-c default_toast_compression=lz4' zstd -dc '$RESTORE_PATH' | PGOPTIONS='-c default_toast_compression=lz4' '$PG_BIN/pg_restore' --exit-on-error --single-transaction --no-password -d diag_restore"
    check_counts diag_restore "pg_restore with lz4 TOAST compression"
    sql postgres "DROP DATABASE diag_restore" >/dev/null || die "cannot drop diag_restore"
    # What our restore does now: a decompressed copy, then pg_restore -j (one
    # job per core) with the session settings the daemon gives it.
    diag D_UNZST "zstd -dc '$RESTORE_PATH' >'$RAW.copy'"
    sql postgres "CREATE DATABASE diag_restore" >/dev/null || die "cannot create diag_restore"
    diag D_PGRESTORE_J "PGOPTIONS='-c synchronous_commit=off -c maintenance_work_mem=128MB' '$PG_BIN/pg_restore' --exit-on-error --jobs=$(nproc) --no-password -d diag_restore '$RAW.copy'"
    check_counts diag_restore "pg_restore -j from a decompressed copy"
    rm -f -- "$RAW.copy"
    sql postgres "DROP DATABASE IF EXISTS oldstack_restore" >/dev/null
    sql postgres "CREATE DATABASE oldstack_restore" >/dev/null || die "cannot create oldstack_restore"
    diag D_PSQL "'$PG_BIN/psql' -X -q -v ON_ERROR_STOP=1 -d oldstack_restore -f '$PLAIN' >/dev/null"
    sql postgres "DROP DATABASE oldstack_restore" >/dev/null
    diag D_DROP "'$PG_BIN/psql' -X -q -d postgres -c 'DROP DATABASE diag_restore'"
    rm -f -- "$RAW" "$PLAIN"
fi

# ---------------------------------------------------------------------------
# Report

BUSY_END=$(cpu_busy)

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r + 0 <= t + 0) ? "PASS" : "MISS" }'; }
runs() { # runs FORMAT_FN VALUES...: the runs, formatted, in columns
    local fn=$1 v out=""
    shift
    for v in "$@"; do out+=$(printf ' %8s' "$($fn "$v")"); done
    printf '%s' "$out"
}
diff_ms() { # element-wise A-B of two arrays given as "a1 a2 ..." "b1 b2 ..."
    local -a a b
    local k
    read -ra a <<<"$1"
    read -ra b <<<"$2"
    for k in "${!a[@]}"; do echo $((a[k] - b[k])); done
}

OB=$(median "${OURS_B_MS[@]}")
LB=$(median "${OLD_B_MS[@]}")
OS=$(median "${OURS_B_BYTES[@]}")
LS=$(median "${OLD_B_BYTES[@]}")
OR=$(median "${OURS_R_MS[@]}")
OV=$(median "${SERVE_MS[@]}")
LR=$(median "${OLD_R_MS[@]}")
SB=$(median "${SEP_MS[@]}")
SF=$(median "${SAFETY_MS[@]}")
mapfile -t MINUS < <(diff_ms "${OURS_R_MS[*]}" "${SEP_MS[*]}")
OM=$(median "${MINUS[@]}")
R_B=$(ratio "$OB" "$LB")
R_S=$(ratio "$OS" "$LS")
R_R=$(ratio "$OR" "$LR")
R_RV=$(ratio "$OV" "$LR")
R_RM=$(ratio "$OM" "$LR")

hdr=""
for ((i = 1; i <= RUNS; i++)); do hdr+=$(printf ' %8s' "run $i"); done
row() { printf '%-46s%s %8s  %-22s %s\n' "$1" "$2" "$3" "$4" "$5"; }

echo
echo "pagodirecto backup benchmark: $RUNS runs each, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ), took $(($(date +%s) - BENCH_START)) s"
echo "daemon $("$PD_BIN" --version 2>/dev/null | head -n 1) ($PD_BIN, source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), built $(date -r "$PD_BIN" +%H:%M:%S)); postgres $PG_VERSION"
echo "CPU busy with other work: ${BUSY_START}% before, ${BUSY_END}% after the runs"
if ((BUSY_START >= 15 || BUSY_END >= 15)); then
    echo "warning: the machine was busy; other work skews these figures (ours and old alternate, so ratios suffer less)"
fi
echo "data: $DB_MIB MiB (pg_database_size), generated in $(secs "$GEN_MS") s (+ $(secs "$VACUUM_MS") s VACUUM ANALYZE, CHECKPOINT);"
echo "      $TEXT_MIB MiB of prose in notes and activity bodies, audit.events $AUDIT_MIB MiB; rows:"
echo "$SOURCE_COUNTS" | awk -F= '$2 > 0 { printf "%s%s %s", (n++ ? ", " : "      "), $1, $2 } END { print "" }'
if [[ $DIAG == 1 ]]; then
    echo "      plain SQL dump $(mib "$PLAIN_BYTES") MiB -> gzip $(mib "$LS") MiB ($(ratio "$PLAIN_BYTES" "$LS"):1); pg_dump -Fc -Z0 $(mib "$RAW_BYTES") MiB -> zstd -3 $(mib "$ZSTD_BYTES") MiB ($(ratio "$RAW_BYTES" "$ZSTD_BYTES"):1)"
fi
echo
row "measurement" "$hdr" "median" "ours/old (target)" "result"
row "backup, ours: backup create, verified (s)" "$(runs secs "${OURS_B_MS[@]}")" "$(secs "$OB")" "" ""
row "backup, old: pg_dump | gzip (s)" "$(runs secs "${OLD_B_MS[@]}")" "$(secs "$LB")" "" ""
row "  backup time" "" "" "x$R_B (<= x$BACKUP_RATIO_MAX)" "$(verdict "$R_B" "$BACKUP_RATIO_MAX")"
row "size, ours: .pgdump.zst (MiB)" "$(runs mib "${OURS_B_BYTES[@]}")" "$(mib "$OS")" "" ""
row "size, old: .sql.gz (MiB)" "$(runs mib "${OLD_B_BYTES[@]}")" "$(mib "$LS")" "" ""
row "  size" "" "" "x$R_S (<= x$SIZE_RATIO_MAX)" "$(verdict "$R_S" "$SIZE_RATIO_MAX")"
row "restore, ours: until serving the restored data (s)" "$(runs secs "${SERVE_MS[@]}")" "$(secs "$OV")" "" ""
row "restore, ours: restore --yes, with the safety backup (s)" "$(runs secs "${OURS_R_MS[@]}")" "$(secs "$OR")" "" ""
row "  backup create of the then-current data (s)" "$(runs secs "${SEP_MS[@]}")" "$(secs "$SB")" "" ""
row "  ours total minus that backup (s)" "$(runs secs "${MINUS[@]}")" "$(secs "$OM")" "" ""
row "  (the safety backup inside, its manifest) (s)" "$(runs secs "${SAFETY_MS[@]}")" "$(secs "$SF")" "" ""
row "restore, old: gunzip | psql (s)" "$(runs secs "${OLD_R_MS[@]}")" "$(secs "$LR")" "" ""
row "  restore time, until serving again" "" "" "x$R_RV (<= x$RESTORE_RATIO_MAX)" "$(verdict "$R_RV" "$RESTORE_RATIO_MAX")"
row "  (with the safety backup, written after)" "" "" "x$R_R" ""
row "  (with the safety backup, minus one backup)" "" "" "x$R_RM" ""
echo
echo "Ours includes what the old stack never did: the backup counts every table's rows, fsyncs the file and"
echo "reads it back whole (checksum + pg_restore --list); the restore first verifies the backup, restores"
echo "into a fresh database and swaps it in, keeping the current data aside unchanged (the old"
echo "restore-db.sh threw it away); once the API serves the restored data, it writes the safety backup"
echo "from the data set aside and drops it. 'minus one backup' subtracts a backup create of the same"
echo "data measured just before each restore."

if [[ $DIAG == 1 ]]; then
    core=$((OR - SF))
    echo
    echo "where the time goes (each part once, same data; medians above for comparison):"
    printf '  %-68s %7s s\n' \
        "ours backup, median" "$(secs "$OB")" \
        "  exact row counts of every table" "$(secs "$D_COUNT")" \
        "  pg_dump -Fc -Z0 -f file (dump alone)" "$(secs "$D_DUMP")" \
        "  zstd -3 -T2 of that file (compression alone)" "$(secs "$D_ZSTD")" \
        "  pg_dump -Fc -Z0 | zstd -3 -T2 > file (streamed, unverified)" "$(secs "$D_PIPE")" \
        "  backup verify (checksum + pg_restore --list of the whole stream)" "$(secs "$D_VERIFY")" \
        "  sha256sum + zstd -dc of the file (that read-back, by CLI tools)" "$(secs "$D_READBACK")" \
        "old backup, median" "$(secs "$LB")" \
        "  pg_dump -f plain.sql (dump alone)" "$(secs "$D_PLAIN")" \
        "  gzip -c plain.sql (compression alone)" "$(secs "$D_GZIP")" \
        "ours restore, median" "$(secs "$OR")" \
        "  check + decompress the backup to a copy (as zstd -dc > copy)" "$(secs "$D_UNZST")" \
        "  until serving again (median)" "$(secs "$OV")" \
        "  safety backup afterwards (its manifest's duration, median)" "$(secs "$SF")" \
        "  pg_restore -j of a zstd -dc copy (no data offsets: dump order)" "$(secs "$D_PGRESTORE_J")" \
        "  (before: zstd -dc | pg_restore --single-transaction)" "$(secs "$D_PGRESTORE")" \
        "    (what-if: the same with default_toast_compression=lz4)" "$(secs "$D_PGRESTORE_LZ4")" \
        "  DROP DATABASE of the replaced one (after leaving maintenance)" "$(secs "$D_DROP")" \
        "old restore, median" "$(secs "$LR")" \
        "  gunzip -c (decompression alone)" "$(secs "$D_GUNZIP")" \
        "  psql -f plain.sql (the restore proper, uncompressed)" "$(secs "$D_PSQL")"
    echo
    echo "  the last restore, from the daemon's log (when each step ended):"
    grep -E 'restor|swap|migrat|maintenance|serving|pg_restore|safety' "$DAEMON_LOG" | tail -n 12 |
        sed -E 's/^([0-9T:.-]+)Z +[A-Z]+ +[a-z_:]+: /    \1 /' | cut -c1-150
    if [[ -n $SLOWEST ]]; then
        echo
        echo "  the slowest statements of that pg_restore (server log; the plain dump runs the same ones):"
        echo "$SLOWEST"
    fi
    echo
    echo "what-ifs from these parts (ratios to the old medians; information, not measured as a whole):"
    printf '  %-68s x%s\n' \
        "backup without the verification read-back" "$(ratio $((OB - D_VERIFY)) "$LB")" \
        "restore without the safety backup" "$(ratio "$core" "$LR")" \
        "pg_restore --single-transaction alone vs psql of the plain dump" "$(ratio "$D_PGRESTORE" "$D_PSQL")" \
        "zstd -dc > copy + pg_restore -j alone vs psql of the plain dump" "$(ratio $((D_UNZST + D_PGRESTORE_J)) "$D_PSQL")" \
        "copy + pg_restore -j, no safety backup beside it" "$(ratio $((D_UNZST + D_PGRESTORE_J)) "$LR")"
fi
