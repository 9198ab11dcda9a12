# shellcheck shell=bash
# Helpers shared by scripts/run and scripts/test. Source it; don't run it.
#
# The calling script owns the shell options (`set -euo pipefail`). The
# helpers check their own errors explicitly as well, because errexit is
# ignored inside a function called from an `if`, `&&` or `||`. A missing
# prerequisite that we cannot install is fatal: the helpers `exit 1` with a
# message saying what to do.

# Sourcing twice is harmless, but keep the apt-get update bookkeeping.
if [[ -n ${_HSM_ROTATOR_LIB_LOADED:-} ]]; then
    return 0
fi
_HSM_ROTATOR_LIB_LOADED=1
_HSM_ROTATOR_APT_UPDATED=

# Where Debian's softhsm2 package puts the PKCS#11 module.
SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so

# Progress messages go to stderr so stdout stays usable for data.
log() {
    printf '==> %s\n' "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# 24 random alphanumeric characters (same helper as in softhsm/create-token).
# A fixed read from /dev/urandom sliced in bash, instead of
# `tr </dev/urandom | head -c`, which fails under pipefail via SIGPIPE.
random_pin() {
    local raw=''
    while ((${#raw} < 24)); do
        raw+=$(head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${raw:0:24}"
}

# Run "$@" with root privileges: directly when we are root, via
# non-interactive sudo when that works, otherwise return 1 so the caller
# can print installation instructions. Never prompts for a password.
_as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

_can_be_root() {
    ((EUID == 0)) || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

# Install Debian packages non-interactively, running `apt-get update` at
# most once per script run. Fails (exit 1) with a manual command when we
# lack root or apt-get.
_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        die "apt-get not found; install these packages by hand: $*"
    fi
    if ! _can_be_root; then
        die "need root to install: $*
    run:  sudo apt-get install -y $*
    (or re-run this script as root / with passwordless sudo)"
    fi
    if [[ -z $_HSM_ROTATOR_APT_UPDATED ]]; then
        log "apt-get update"
        _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
            die "apt-get update failed"
        _HSM_ROTATOR_APT_UPDATED=1
    fi
    log "apt-get install $*"
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" ||
        die "apt-get install $* failed"
}

# SoftHSM2 (softhsm2-util + PKCS#11 module), pkcs11-tool (opensc) and
# openssl. One apt-get call for whatever is missing.
ensure_softhsm() {
    local -a missing=()
    if ! command -v softhsm2-util >/dev/null 2>&1 || [[ ! -e $SOFTHSM_MODULE ]]; then
        missing+=(softhsm2)
    fi
    command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    _apt_install "${missing[@]}"
    if ! command -v softhsm2-util >/dev/null 2>&1 || [[ ! -e $SOFTHSM_MODULE ]]; then
        die "softhsm2 installed but softhsm2-util or $SOFTHSM_MODULE is still missing"
    fi
}

# Port and host the test suite's PostgreSQL is expected on.
_PG_HOST=127.0.0.1
_PG_PORT=5432

_pg_ready() {
    pg_isready -q -t 1 -h "$_PG_HOST" -p "$_PG_PORT" >/dev/null 2>&1
}

# Wait (at most 30 s) for the server to accept connections.
_pg_wait() {
    local deadline=$((SECONDS + 30))
    until _pg_ready; do
        if ((SECONDS >= deadline)); then
            die "PostgreSQL on $_PG_HOST:$_PG_PORT did not become ready within 30 s
    (Debian logs: /var/log/postgresql/)"
        fi
        sleep 1
    done
}

# Create database $1 as user postgres over TCP unless it exists.
# -X: ignore ~/.psqlrc; -w: fail instead of prompting for a password.
_pg_create_db() {
    local db=$1 out
    local -a psql=(psql -X -w -q -h "$_PG_HOST" -p "$_PG_PORT" -U postgres -d postgres)
    if ! out=$("${psql[@]}" -Atc "select 1 from pg_database where datname = '$db'" 2>&1); then
        die "cannot connect to PostgreSQL on $_PG_HOST:$_PG_PORT as user postgres without a password:
    $out
    Allow it (pg_hba.conf: 'host all all 127.0.0.1/32 trust') or export
    TEST_DATABASE_URL pointing at a database you can use."
    fi
    [[ $out == 1 ]] && return 0
    log "creating database $db"
    # Tolerate a concurrent creator winning the race.
    if ! out=$("${psql[@]}" -c "create database \"$db\"" 2>&1) &&
        [[ $out != *"already exists"* ]]; then
        die "could not create database $db: $out"
    fi
}

# "VERSION NAME" of the Debian cluster configured for port $_PG_PORT, if
# any (normally "15 main" on Debian 12). Empty output when there is none.
_pg_find_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    # Columns: Ver Cluster Port Status Owner Datadir Logfile
    pg_lsclusters --no-header 2>/dev/null |
        awk -v port="$_PG_PORT" '$3 == port { print $1, $2; exit }'
}

# Trust TCP connections from localhost. Only used on a cluster we installed
# ourselves: a throwaway test server, never someone's existing setup.
# pg_hba.conf is first-match, so the lines go at the top.
_pg_trust_localhost() {
    local ver=$1 name=$2 hba marker='# hsm-rotator: trust local TCP for tests'
    hba=/etc/postgresql/$ver/$name/pg_hba.conf
    _as_root grep -qxF "$marker" "$hba" && return 0
    log "configuring trust auth for 127.0.0.1 in $hba"
    # Written through `_as_root sh` so it also works via sudo.
    # shellcheck disable=SC2016 # $1/$2 expand in the inner sh, not here
    _as_root sh -c '
        { printf "%s\n" "$2" \
            "host all all 127.0.0.1/32 trust" \
            "host all all ::1/128 trust"; cat "$1"; } >"$1.new" &&
        chown --reference="$1" "$1.new" && chmod --reference="$1" "$1.new" &&
        mv -f "$1.new" "$1"' sh "$hba" "$marker" ||
        die "could not update $hba"
}

_pg_ctl() {
    # --skip-systemctl-redirect: talk to the cluster directly; containers
    # and CI runners usually have no systemd.
    _as_root pg_ctlcluster --skip-systemctl-redirect "$@"
}

# Make PostgreSQL answer on 127.0.0.1:5432 with a database "test", and
# export TEST_DATABASE_URL.
#
# A TEST_DATABASE_URL that is already set is honoured as is: the caller
# manages that server (CI service container, remote DB...), so we neither
# start, install nor reconfigure anything.
ensure_postgres() {
    if [[ -n ${TEST_DATABASE_URL:-} ]]; then
        export TEST_DATABASE_URL
        log "using TEST_DATABASE_URL from the environment"
        return 0
    fi

    if ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
        _apt_install postgresql-client
    fi

    local cluster ver name
    if ! _pg_ready; then
        cluster=$(_pg_find_cluster)
        if [[ -n $cluster ]]; then
            read -r ver name <<<"$cluster"
            # An existing cluster that is merely stopped: start it and leave
            # its configuration alone.
            log "starting PostgreSQL cluster $ver/$name"
            _can_be_root || die "PostgreSQL cluster $ver/$name is not running and we lack root;
    run:  sudo pg_ctlcluster $ver $name start"
            # `start` also fails if the server is already coming up, so
            # only warn; _pg_wait decides.
            _pg_ctl "$ver" "$name" start || log "pg_ctlcluster start failed; waiting anyway"
        elif compgen -G '/etc/postgresql/*/*/postgresql.conf' >/dev/null; then
            die "PostgreSQL clusters exist under /etc/postgresql but none uses port $_PG_PORT;
    start one on $_PG_HOST:$_PG_PORT or export TEST_DATABASE_URL"
        else
            _apt_install postgresql
            cluster=$(_pg_find_cluster)
            [[ -n $cluster ]] || die "postgresql installed but no cluster on port $_PG_PORT (see pg_lsclusters)"
            read -r ver name <<<"$cluster"
            _pg_trust_localhost "$ver" "$name"
            # The package may have started the cluster before we changed
            # pg_hba.conf (status exits 3 when it is not running).
            if _pg_ctl "$ver" "$name" status >/dev/null 2>&1; then
                _pg_ctl "$ver" "$name" reload || die "could not reload cluster $ver/$name"
            else
                log "starting PostgreSQL cluster $ver/$name"
                _pg_ctl "$ver" "$name" start || log "pg_ctlcluster start failed; waiting anyway"
            fi
        fi
        _pg_wait
    fi

    _pg_create_db test
    export TEST_DATABASE_URL="postgres://postgres@$_PG_HOST:$_PG_PORT/test"
}

# MariaDB on 127.0.0.1:3306 for the JWTPlus migration tests (tests/it/migrate.rs), as
# root with no password, and export TEST_MYSQL_URL (the tests make one database each).
#
# A TEST_MYSQL_URL already set is honoured as is; a server already answering on port 3306
# is reused; otherwise mariadb-server is installed through apt and started (no systemd
# needed), with root allowed over TCP without a password: a throwaway test server.
_MY_HOST=127.0.0.1
_MY_PORT=3306

_my_ready() {
    mariadb-admin --protocol=tcp -h "$_MY_HOST" -P "$_MY_PORT" -u root ping >/dev/null 2>&1 ||
        mysqladmin --protocol=tcp -h "$_MY_HOST" -P "$_MY_PORT" -u root ping >/dev/null 2>&1
}

ensure_mariadb() {
    if [[ -n ${TEST_MYSQL_URL:-} ]]; then
        export TEST_MYSQL_URL
        log "using TEST_MYSQL_URL from the environment"
        return 0
    fi
    if ! _my_ready; then
        if ! command -v mariadbd >/dev/null 2>&1 && ! command -v mysqld >/dev/null 2>&1; then
            _apt_install mariadb-server
        fi
        if ! _my_ready; then
            log "starting MariaDB"
            _can_be_root || die "MariaDB is not running on $_MY_HOST:$_MY_PORT and we lack root;
    run:  sudo service mariadb start   (or export TEST_MYSQL_URL)"
            _as_root service mariadb start >/dev/null 2>&1 ||
                _as_root sh -c 'mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld &&
                    (mysqld_safe --bind-address=127.0.0.1 --port=3306 >/dev/null 2>&1 &)' ||
                die "could not start MariaDB"
            local deadline=$((SECONDS + 30))
            until _my_ready || mariadb -u root -e 'select 1' >/dev/null 2>&1; do
                ((SECONDS >= deadline)) && die "MariaDB did not become ready within 30 s"
                sleep 1
            done
            # A fresh Debian install lets root in through the unix socket only.
            _my_ready || _as_root mariadb -u root -e \
                "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;" ||
                die "could not let root in over TCP"
            _my_ready || die "MariaDB on $_MY_HOST:$_MY_PORT does not let root in without a password;
    export TEST_MYSQL_URL=mysql://USER:PASS@HOST:PORT/test with a user that may create databases"
        fi
    fi
    export TEST_MYSQL_URL="mysql://root@$_MY_HOST:$_MY_PORT/test"
}

# cargo-nextest runs each test in its own process, which the SoftHSM tests
# rely on (see softhsm/README.md).
ensure_nextest() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust via https://rustup.rs"
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "cargo-nextest not found; installing it with: cargo install --locked cargo-nextest"
        cargo install --locked cargo-nextest || die "cargo install cargo-nextest failed"
    fi
}
