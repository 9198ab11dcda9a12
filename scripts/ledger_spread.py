#!/usr/bin/env python3
"""`scripts/bench ledger`: what a ledger row costs SQLite as the writes spread over more keys.

The token ledger's schema (migrations/sqlite/0001_initial.sql: `tokens` with its jti key and
the (app_id, sub_sha256), (kid) and (exp) indexes) in a scratch database with ROWS rows over
2,000 apps, in WAL mode with synchronous = NORMAL as the service opens it. Rows are then
inserted in transactions of 32 (what the ledger writer commits under 32 concurrent issuers)
with the apps (and their kids) of the rows drawn from 8 or from 2,000, with one subject or
random subjects. The cases alternate, ROUNDS times each, SECONDS each time; the table gives
the mean rate of each case and its ratio to the 8-app, one-subject case.
"""
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
SCHEMA = """
CREATE TABLE tokens (
    jti TEXT PRIMARY KEY, app_id TEXT NOT NULL, kid TEXT NOT NULL, sub_sha256 TEXT,
    iat INTEGER NOT NULL, exp INTEGER NOT NULL, family TEXT, refresh_exp INTEGER, meta TEXT);
CREATE INDEX tokens_app_sub ON tokens (app_id, sub_sha256);
CREATE INDEX tokens_kid ON tokens (kid);
CREATE INDEX tokens_exp ON tokens (exp);
"""


def fill(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.executescript(SCHEMA)
    c.execute("PRAGMA cache_size = -1000000")
    c.execute("BEGIN")
    c.execute(
        f"""WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < {ROWS})
        INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp)
        SELECT printf('0%09X%016X', i, abs(random()) % 1152921504606846976),
               printf('A%025d', i % 2000), printf('K%025d', i % 2000),
               lower(hex(randomblob(32))), i, 100000000 + i FROM c"""
    )
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def run(path, apps, random_subjects, seq):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA synchronous = NORMAL")
    one = "%064x" % 12345
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < SECONDS:
        rows = []
        for _ in range(BATCH):
            seq += 1
            a = random.randrange(apps)
            sub = "%064x" % random.getrandbits(256) if random_subjects else one
            rows.append(
                ("1%09X%016X" % (seq, random.getrandbits(60)), "A%025d" % a, "K%025d" % a, sub, seq, 200000000 + seq)
            )
        c.execute("BEGIN")
        c.executemany("INSERT INTO tokens (jti, app_id, kid, sub_sha256, iat, exp) VALUES (?, ?, ?, ?, ?, ?)", rows)
        c.execute("COMMIT")
        n += BATCH
    c.close()
    return n / (time.monotonic() - t0), seq


def main():
    with tempfile.TemporaryDirectory(prefix="hsmr-ledger.") as d:
        path = os.path.join(d, "ledger.db")
        fill(path)
        cases = [(8, False), (2000, False), (8, True), (2000, True)]
        rates = {c: [] for c in cases}
        seq = 0
        for _ in range(ROUNDS):
            for case in cases:
                r, seq = run(path, *case, seq)
                rates[case].append(r)
        base = sum(rates[cases[0]]) / ROUNDS
        print(f"| ledger rows/s, {ROWS:,} rows already, transactions of {BATCH} | rows/s | × 8 apps, one subject |")
        print("|---|---|---|")
        for apps, rnd in cases:
            mean = sum(rates[(apps, rnd)]) / ROUNDS
            subj = "random subjects" if rnd else "one subject"
            print(f"| {apps} apps (and kids), {subj} | {mean:.0f} | {mean / base:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
