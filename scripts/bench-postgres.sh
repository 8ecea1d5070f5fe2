# Shared by scripts/bench-ingest and scripts/bench-ha; sourced after bench-common.sh, not run.
# One throwaway local PostgreSQL cluster per benchmark run, from the newest installed server
# binaries (Debian's `postgresql`: /usr/lib/postgresql/VERSION/bin): durable defaults (fsync,
# synchronous_commit on), shared_buffers 512MB, listening on 127.0.0.1 only, started pinned
# to the server's CPU (pin_server) so the daemon and its database share one core as SQLite's
# file does. As root, PostgreSQL's tools run as the postgres user (initdb refuses root).
#
# The sourcing script sets `work` (its temp folder, removed at the end; the cluster lives in
# $work/pg) and calls stop_postgres from its EXIT trap. start_postgres sets pg_port.
#
# shellcheck shell=bash disable=SC2154 # work, bench and pin_server: the sourcing scripts'

pg_bin=""
pg_port=""

# The newest installed PostgreSQL's bin folder (with an initdb), or nothing.
find_postgres() {
    local dir
    # shellcheck disable=SC2012 # Debian's version folders: plain names, sorted by version
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then echo "$dir"; fi
}

# The major version of the PostgreSQL in find_postgres (e.g. 15), or nothing.
postgres_version() {
    local dir
    dir=$(find_postgres)
    if [[ -n "$dir" ]]; then basename "$(dirname "$dir")"; fi
}

# PostgreSQL's tools run as the postgres user when we are root (initdb refuses root).
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_url DATABASE: the URL of a database of the run's cluster.
pg_url() {
    echo "postgres://postgres@127.0.0.1:$pg_port/$1"
}

# psql_admin SQL: one statement on the cluster's postgres database.
psql_admin() {
    "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$(pg_url postgres)" -c "$1" >&2
}

# start_postgres [PREFILLED_DB]: initdb (synced: a durable cluster) and start the run's
# cluster pinned to the server's CPU (sets pg_bin and pg_port); with a SQLite file made by
# `orderwatch-bench prepare`, also the template database `prefilled` holding its rows.
start_postgres() {
    local prefilled_file=${1:-}
    local dir="$work/pg"
    pg_bin=$(find_postgres)
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        chmod a+x "$work" # mktemp's 0700 would keep the postgres user out
        chown postgres: "$dir"
    fi
    as_postgres "$pg_bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale C >/dev/null
    pg_port=$("$bench" free-port)
    local options="-c listen_addresses=127.0.0.1 -p $pg_port -k $dir -c shared_buffers=512MB"
    local as_user=()
    if [[ $(id -u) -eq 0 ]]; then as_user=(runuser -u postgres --); fi
    # Started pinned: the postmaster and every backend it forks stay on the server's CPU.
    "${pin_server[@]}" "${as_user[@]}" "$pg_bin/pg_ctl" -w -D "$dir/data" -o "$options" \
        -l "$dir/server.log" start >/dev/null
    if [[ -n "$prefilled_file" ]]; then
        psql_admin "CREATE DATABASE prefilled"
        "$bench" prepare-pg --url "$(pg_url prefilled)" --from "$prefilled_file" >&2
    fi
}

# The postmaster's PID: its children are the cluster's other processes (backends, WAL
# writer, checkpointer, …).
postgres_pid() {
    head -n 1 "$work/pg/data/postmaster.pid"
}

# fresh_database NAME [TEMPLATE]: a new database (empty, or a file copy of TEMPLATE), then a
# checkpoint, so the run does not pay for the copy's writes.
fresh_database() {
    if [[ -n "${2:-}" ]]; then
        psql_admin "CREATE DATABASE $1 TEMPLATE $2 STRATEGY FILE_COPY"
    else
        psql_admin "CREATE DATABASE $1"
    fi
    psql_admin "CHECKPOINT"
}

# drop_database NAME: drops it, closing any connection still open to it.
drop_database() {
    psql_admin "DROP DATABASE $1 WITH (FORCE)"
}

# stop_postgres: stops the cluster if it was started (for the EXIT trap; never fails).
stop_postgres() {
    if [[ -n "$pg_port" ]]; then
        as_postgres "$pg_bin/pg_ctl" -D "$work/pg/data" stop -m fast >/dev/null 2>&1 || true
    fi
}
