#!/usr/bin/env python3
"""Group `perf report --no-children --sort dso,sym --stdio -q` lines (stdin) into the phases
of a request, by the library or crate each sample's function belongs to (self time, so a
phase is the code that ran, not what called it). Prints a Markdown table of shares; with
the server's CPU per token (scripts/bench profile prints it) the shares are microseconds.
"""
import re
import sys

# (phase, test on dso and symbol), first match wins.
PHASES = [
    ("C_Sign (SoftHSM2 and its crypto library)", lambda d, s: re.search(r"softhsm|libcrypto|botan", d)),
    ("kernel (socket reads and writes, epoll, futex wake-ups, scheduling)", lambda d, s: "kernel" in d),
    ("ledger (SQLite and sqlx)", lambda d, s: re.search(r"sqlite|sqlx", s) or "sqlite" in d),
    ("HTTP parsing, routing, response writing (hyper, axum, http)", lambda d, s: re.search(r"hyper|httparse|axum|\bhttp::|matchit|tower", s)),
    ("JSON (serde_json: request body, claims, answer)", lambda d, s: "serde_json" in s or "serde::" in s),
    ("SHA-256 (access-token digest, ES256 input hash) and base64", lambda d, s: re.search(r"sha2|digest::|base64|sha256", s)),
    ("logging and metrics (tracing, prometheus)", lambda d, s: re.search(r"tracing|prometheus", s)),
    ("tokio runtime, channels, timers", lambda d, s: "tokio" in s),
    ("allocation and memcpy (libc)", lambda d, s: "libc" in d),
    ("cryptoki (PKCS#11 bindings)", lambda d, s: "cryptoki" in s),
]

totals = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
    phase = next((p for p, t in PHASES if t(dso, sym)), None)
    if phase is None:
        phase = "the service's own code (hsm_rotator) and the rest"
    totals[phase] = totals.get(phase, 0.0) + pct

print("| phase | share of server CPU |")
print("|---|---|")
for p, v in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f"| {p} | {v:.1f} % |")
