#!/usr/bin/env bash
# Compares logwarden with the tools an on-call engineer would otherwise use, on one
# generated nginx `combined` file, in one run, and prints throughput, peak memory and the
# ratio of each to logwarden, plus whether each answer agrees with the corpus's ground
# truth (the planted attackers' 4xx counts).
#
#   benches/compare.sh [SIZE_MB]        (default 1000; the corpus is cached in target/)
#   PGO=1 benches/compare.sh [SIZE_MB]  also the profile-guided build of benches/pgo.sh
#   PGO_BIN=PATH benches/compare.sh ... a PGO build made before, instead of building one
#   RUNS=N benches/compare.sh ...       N rounds (default 3); each time is the median
#
# Tools that are not installed (ripgrep, GoAccess, fail2ban-regex: Debian packages) are
# listed as skipped. Timings are wall-clock with a warm page cache; peak RSS (the largest
# of the rounds) comes from GNU time. Every command runs once per round, in an order
# shuffled for each round, so that a slow phase of the machine weighs on every row alike
# rather than on whichever command it fell on; single runs on a 2-core VM moved ratios by
# 20-40%. Never used as a test assertion.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1000}
corpus=target/compare/combined-${size}MB.log
truth=target/compare/combined-${size}MB.truth.json
mkdir -p target/compare
if [ ! -s "$corpus" ]; then
    echo "generating a ${size} MB corpus (fixed seed) ..." >&2
    python3 benches/gen_corpus.py "$size" "$corpus" --truth "$truth"
fi
cargo build --release --quiet
lw=target/release/logwarden
pgo=${PGO_BIN:-}
if [ -z "$pgo" ] && [ "${PGO:-0}" = 1 ]; then
    pgo=$(bash benches/pgo.sh | tail -1)
fi
bytes=$(stat -c %s "$corpus")
lines=$(python3 -c "import json;print(json.load(open('$truth'))['lines'])")
cat "$corpus" > /dev/null   # warm the page cache

names=()
commands=()
# run NAME COMMAND...: adds a shell command to the rounds below.
run() {
    names+=("$1"); shift
    commands+=("$*")
}

run "cat > /dev/null" "cat '$corpus' > /dev/null"
run "wc -l" "wc -l '$corpus'"
run "cat | wc -l" "cat '$corpus' | wc -l"
if command -v rg >/dev/null; then run "rg -c ' 40[0-9] '" "rg -c ' 40[0-9] ' '$corpus'"; fi
run "runbook grep|awk|sort|uniq" "grep -E '(40[1-4]|50[0-9])' '$corpus' | awk '{print \$1}' | sort | uniq -c | sort -nr"
run "awk \$9 ~ /^[45]/" "awk '\$9 ~ /^[45]/ {c[\$1]++} END {for (k in c) print c[k], k}' '$corpus'"
if command -v goaccess >/dev/null; then
    run "goaccess (JSON report)" "goaccess '$corpus' --log-format=COMBINED -o json --no-progress"
fi
if command -v fail2ban-regex >/dev/null && [ -f /etc/fail2ban/filter.d/nginx-botsearch.conf ]; then
    run "fail2ban-regex (nginx-botsearch)" "fail2ban-regex '$corpus' /etc/fail2ban/filter.d/nginx-botsearch.conf"
fi
run "logwarden --threads 1" "$lw scan --threads 1 --output json '$corpus'"
run "logwarden (all threads)" "$lw scan --output json '$corpus'"
run "logwarden, stdin" "cat '$corpus' | $lw scan --output json"
if [ -n "$pgo" ]; then
    run "logwarden PGO build --threads 1" "$pgo scan --threads 1 --output json '$corpus'"
    run "logwarden PGO build (all threads)" "$pgo scan --output json '$corpus'"
    run "logwarden PGO build, stdin" "cat '$corpus' | $pgo scan --output json"
fi

# Each round runs every command once, in an order of its own (shuffled with the round as
# the seed): in a fixed order, the same command followed the long GoAccess and fail2ban
# runs every round, and logwarden's file scan came out slower than its own stdin scan in
# a run of three rounds and one of five. Per command, one line per round: seconds, peak
# RSS (KB). The output kept is the last round's.
runs=${RUNS:-3}
for round in $(seq "$runs"); do
    echo "round $round of $runs ..." >&2
    order=$(python3 -c 'import random,sys; l=list(range(int(sys.argv[1]))); random.Random(int(sys.argv[2])).shuffle(l); print(*l)' "${#commands[@]}" "$round")
    for i in $order; do
        tfile=target/compare/time.$$
        # Untimed: this machine's kernel pages out file pages left idle for about a minute
        # (a DAMON `pageout` scheme, /sys/kernel/mm/damon), so a command that followed
        # GoAccess or fail2ban read part of the corpus from disk again.
        cat "$corpus" > /dev/null
        /usr/bin/time -f "%e %M" -o "$tfile" bash -c "${commands[$i]}" > "target/compare/out.$$.$i" 2>/dev/null || true
        cat "$tfile" >> "target/compare/times.$$.$i"
    done
done
# median SECONDS-AND-RSS-FILE: the median seconds and the largest peak RSS of the rounds.
median() {
    python3 -c 'import sys,statistics as st
rows=[l.split() for l in open(sys.argv[1]) if l.strip()]
print(st.median(float(r[0]) for r in rows), max(int(r[1]) for r in rows))' "$1"
}

# Does the answer give each planted attacker's 4xx count exactly?
check() {
    local name=$1 out=$2
    python3 - "$truth" "$out" "$name" <<'PY'
import json, re, sys
truth = json.load(open(sys.argv[1]))["planted"]
out, name = open(sys.argv[2], errors="replace").read(), sys.argv[3]
if name.startswith("logwarden"):
    ips = {c["ip"]: c for c in json.loads(out)["ips"]}
    ok = all(ips.get(ip, {}).get("status_4xx") == p["status_4xx"] for ip, p in truth.items())
elif name.startswith(("runbook", "awk")):
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            a, b = parts
            n, ip = (int(a), b) if a.isdigit() else (int(b), a)
            counts[ip] = n
    ok = all(counts.get(ip) == p["status_4xx"] for ip, p in truth.items())
else:
    print("n/a"); sys.exit()
print("yes" if ok else "no")
PY
}

lw_secs=
for i in "${!names[@]}"; do
    if [ "${names[$i]}" = "logwarden (all threads)" ]; then read -r lw_secs _ <<<"$(median "target/compare/times.$$.$i")"; fi
done
printf '\ncorpus: %s (%d MB, %d lines, %s; median of %d rounds)\n\n' "$corpus" $((bytes / 1000000)) "$lines" "$(nproc) cores" "$runs"
printf '| command | MB/s | lines/s | peak RSS MB | time vs logwarden | exact 4xx per planted client |\n|---|---:|---:|---:|---:|---|\n'
for i in "${!names[@]}"; do
    name=${names[$i]} out=target/compare/out.$$.$i
    read -r secs rss <<<"$(median "target/compare/times.$$.$i")"
    python3 - "$name" "$secs" "$rss" "$bytes" "$lines" "$lw_secs" "$(check "$name" "$out")" <<'PY'
import sys
name, secs, rss, size, lines, lw, ok = sys.argv[1:]
secs = max(float(secs), 0.001)
name = name.replace("|", "\\|")
print(f"| `{name}` | {int(size) / 1e6 / secs:,.0f} | {int(lines) / secs:,.0f} | {int(rss) / 1024:,.0f} | {secs / float(lw):.2f}x | {ok} |")
PY
    rm -f "$out"
done
# Every round's seconds, in the order the rounds ran: a median hides a slow phase of the
# machine, and these show whether one fell on a few rounds or on a whole command.
printf '\nseconds per round:\n\n'
for i in "${!names[@]}"; do
    printf -- '- `%s`: %s\n' "${names[$i]}" "$(awk '{printf "%s%s", sep, $1; sep=", "}' "target/compare/times.$$.$i")"
    rm -f "target/compare/times.$$.$i"
done
rm -f target/compare/time.$$
