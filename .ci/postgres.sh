# Sourced by .ci/test: makes Debian's PostgreSQL available to the tests, installing the
# `postgresql` package when it is missing, and starts one throwaway cluster for the whole
# run (the tests make a database each on it; without TILEBOX_TEST_DATABASE_URL every test
# process would start a cluster of its own, which works but costs most of a second each).
# The cluster is stopped and removed when the sourcing shell exits.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing PostgreSQL (Debian's postgresql package)" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    # The package would otherwise create and start a cluster on port 5432.
    $sudo mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' | $sudo tee /etc/postgresql-common/createcluster.d/tilebox.conf >/dev/null
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
export TILEBOX_PG_BINDIR="$pg_bin"
pg_as() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}
pg_dir="$(mktemp -d /tmp/tilebox-ci-pg.XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$pg_dir"
pg_as "$pg_bin/initdb" -D "$pg_dir/data" -U tilebox --auth=trust -E UTF8 --no-locale --no-sync >/dev/null
# fsync off (the tests kill processes, not the machine) but synchronous_commit on, so a
# commit is acknowledged only once its WAL is written and an immediate shutdown loses none.
# Another process may take the free port before the server binds it: then a new port.
pg_started=""
for pg_attempt in 1 2 3; do
    pg_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    : >"$pg_dir/log"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$pg_dir/log"
    if pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 60 -o \
        "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c full_page_writes=off -c max_connections=1000" \
        start >/dev/null; then
        pg_started=1
        break
    fi
    pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    grep -q "could not bind" "$pg_dir/log" || break
    echo "test PostgreSQL: port $pg_port was taken (attempt $pg_attempt of 3)" >&2
done
if [ -z "$pg_started" ]; then
    echo "test PostgreSQL did not start:" >&2
    cat "$pg_dir/log" >&2
    rm -rf "$pg_dir"
    return 1 2>/dev/null || exit 1
fi
stop_test_postgres() {
    pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
}
trap stop_test_postgres EXIT
export TILEBOX_TEST_DATABASE_URL="postgres://tilebox@127.0.0.1:$pg_port/postgres"
echo "test PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on port $pg_port" >&2
