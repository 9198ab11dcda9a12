#!/usr/bin/env python3
"""`scripts/bench ledger`: what a ledger row costs SQLite as the writes spread over more keys.

The service's SQLite schema, built by applying migrations/sqlite/*.sql in order, in a
scratch database with ROWS rows over 2,000 apps, issued over the last hour with an hour to
live, in WAL mode with synchronous = NORMAL as the service opens it; and beside it the schema
before migration 0006 (the subject index without the issue-time slot in front), before 0005
(the subject index on the app's id and the subject digest as text, since on two integers) and
before 0004 (the ledger's `(kid)` and `(exp)` indexes, since replaced), filled the same way. Rows are then inserted in transactions
of 32 (what the ledger writer commits under 32 concurrent issuers) with the apps (and their
kids) of the rows drawn from 8 or from 2,000, with one subject or random subjects. The cases
alternate, ROUNDS times each, SECONDS each time; the table gives the mean rate of each case and
its ratio to the 8-app, one-subject case on the current schema.
"""
import glob
import os
import random
import sqlite3
import sys
import tempfile
import time

ROWS = int(os.environ.get("BENCH_LEDGER_ROWS", "2000000"))
SECONDS = float(os.environ.get("BENCH_SECS", "5"))
ROUNDS = 2
BATCH = 32
MIGRATIONS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "migrations", "sqlite", "*.sql")))
SCHEMAS = {
    "current": MIGRATIONS,
    "before 0006": [m for m in MIGRATIONS if os.path.basename(m) < "0006"],
    "before 0005": [m for m in MIGRATIONS if os.path.basename(m) < "0005"],
    "before 0004": [m for m in MIGRATIONS if os.path.basename(m) < "0004"],
}


def keyed(c):
    """Whether the schema has the compact subject index's keys (migration 0005)."""
    return any(r[1] == "app_key" for r in c.execute("PRAGMA table_info(tokens)"))


def slotted(c):
    """Whether the schema has the ledger's issue-time slots (migration 0006)."""
    return any(r[1] == "slot" for r in c.execute("PRAGMA table_info(tokens)"))


NOW = int(time.time())


def fill(path, migrations):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    for m in migrations:
        with open(m) as f:
            c.executescript(f.read())
    c.execute("PRAGMA cache_size = -1000000")
    # The service keys a row by its app's number and its digest's first 7 hex digits, and
    # (0006) by the minute it was issued in, its slot (an hour to live: minute slots).
    keys = (", app_key, sub_key", ", i % 2000 + 1, (i * 2654435761) % 268435456") if keyed(c) else ("", "")
    if slotted(c):
        keys = (keys[0] + ", slot", keys[1] + f", ({NOW} - 3600 + i * 3600 / {ROWS}) / 60 * 60")
    c.execute("BEGIN")
    c.execute(
        f"""WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < {ROWS})
        INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp{keys[0]})
        SELECT printf('0%09X%016X', i, abs(random()) % 1152921504606846976),
               printf('A%025d', i % 2000), printf('K%025d', i % 2000),
               printf('%07x', (i * 2654435761) % 268435456) || lower(substr(hex(randomblob(29)), 1, 57)),
               {NOW} - 3600 + i * 3600 / {ROWS}, {NOW} + i * 3600 / {ROWS}{keys[1]} FROM c"""
    )
    if slotted(c):
        c.execute("INSERT INTO ledger_slots (slot, until) SELECT slot, MAX(exp) FROM tokens GROUP BY slot")
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def run(path, apps, random_subjects, seq):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA synchronous = NORMAL")
    has_keys, has_slot = keyed(c), slotted(c)
    recorded = {}
    one = "%064x" % 12345
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < SECONDS:
        rows = []
        now = int(time.time())
        for _ in range(BATCH):
            seq += 1
            a = random.randrange(apps)
            sub = "%064x" % random.getrandbits(256) if random_subjects else one
            row = ("1%09X%016X" % (seq, random.getrandbits(60)), "A%025d" % a, "K%025d" % a, sub, now, now + 3600)
            rows.append(row + ((a + 1, int(sub[:7], 16)) if has_keys else ()) + ((now - now % 60,) if has_slot else ()))
        c.execute("BEGIN")
        if has_slot and recorded.get(now - now % 60, 0) < now + 3600:
            # What the service does when a batch outlives its slot's recorded end (rounded
            # up to a minute: about once a minute).
            recorded[now - now % 60] = now + 3600 + 60
            c.execute(
                "INSERT INTO ledger_slots (slot, until) VALUES (?, ?) ON CONFLICT (slot) DO UPDATE SET until = excluded.until "
                "WHERE ledger_slots.until < excluded.until",
                (now - now % 60, now + 3600 + 60),
            )
        if has_slot:
            c.executemany(
                "INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp, app_key, sub_key, slot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        elif has_keys:
            c.executemany(
                "INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp, app_key, sub_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        else:
            c.executemany("INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp) VALUES (?, ?, ?, ?, ?, ?)", rows)
        c.execute("COMMIT")
        n += BATCH
    c.close()
    return n / (time.monotonic() - t0), seq


def main():
    with tempfile.TemporaryDirectory(prefix="hsmr-ledger.") as d:
        paths = {}
        for name, migrations in SCHEMAS.items():
            paths[name] = os.path.join(d, name.replace(" ", "-") + ".db")
            fill(paths[name], migrations)
        cases = [(schema, apps, rnd) for schema in SCHEMAS for apps, rnd in [(8, False), (2000, False), (2000, True)]]
        rates = {c: [] for c in cases}
        seq = 0
        for _ in range(ROUNDS):
            for schema, apps, rnd in cases:
                r, seq = run(paths[schema], apps, rnd, seq)
                rates[(schema, apps, rnd)].append(r)
        base = sum(rates[cases[0]]) / ROUNDS
        print(f"| ledger rows/s, {ROWS:,} rows already, transactions of {BATCH} | schema | rows/s | × current, 8 apps, one subject |")
        print("|---|---|---|---|")
        for schema, apps, rnd in cases:
            mean = sum(rates[(schema, apps, rnd)]) / ROUNDS
            subj = "random subjects" if rnd else "one subject"
            print(f"| {apps} apps (and kids), {subj} | {schema} | {mean:.0f} | {mean / base:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
