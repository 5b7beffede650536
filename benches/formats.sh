#!/usr/bin/env bash
# Scans the same generated traffic written in each access-log format logwarden reads at
# speed (nginx `combined`, an `escape=json` log_format, ingress-nginx, and kubectl's
# `--prefix --timestamps` wrapping), in one run, and prints each format's throughput on one
# and all threads, the pipe's own ceiling for the file (`cat | wc -l`), the ratio of lines
# per second to `combined`, and whether the answer gives the planted attackers' exact 4xx
# counts and the same blocklist as `combined`.
#
#   benches/formats.sh [SIZE_MB]   (default 300; corpora are cached in target/compare)
#
# Timings are wall-clock with a warm page cache, the median of RUNS runs (default 3) taken
# in turn across the formats, so a slow phase of the machine touches all of them. Never used
# as a test assertion.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-300}
runs=${RUNS:-3}
base=target/compare/combined-${size}MB
mkdir -p target/compare
if [ ! -s "$base.log" ]; then
    echo "generating a ${size} MB corpus (fixed seed) ..." >&2
    python3 benches/gen_corpus.py "$size" "$base.log" --truth "$base.truth.json"
fi
for fmt in json ingress kubectl; do
    if [ ! -s "$base.$fmt.log" ]; then
        echo "writing it as $fmt ..." >&2
        python3 benches/reformat.py "$fmt" "$base.log" "$base.$fmt.log"
    fi
done
cargo build --release --quiet
lw=target/release/logwarden
declare -A file=([combined]=$base.log [json]=$base.json.log [ingress]=$base.ingress.log [kubectl]=$base.kubectl.log)
formats=(combined json ingress kubectl)
times=target/compare/formats.$$.tsv
: > "$times"
# timed FORMAT WHAT COMMAND...: appends "FORMAT WHAT seconds" to the times file.
timed() {
    local fmt=$1 what=$2; shift 2
    /usr/bin/time -f "%e" -o target/compare/time.$$ bash -c "$*" > /dev/null 2>&1
    printf '%s\t%s\t%s\n' "$fmt" "$what" "$(cat target/compare/time.$$)" >> "$times"
}
for fmt in "${formats[@]}"; do cat "${file[$fmt]}" > /dev/null; done
for _ in $(seq "$runs"); do
    for fmt in "${formats[@]}"; do
        f=${file[$fmt]}
        timed "$fmt" pipe "cat '$f' | wc -l"
        timed "$fmt" one "$lw scan --threads 1 --output json '$f'"
        timed "$fmt" all "$lw scan --output json '$f'"
    done
done
for fmt in "${formats[@]}"; do
    $lw scan --output json "${file[$fmt]}" > "target/compare/formats.$fmt.json"
done
python3 - "$times" "$base.truth.json" "${formats[@]}" <<'PY'
import json, os, statistics, sys
times, truth, formats = sys.argv[1], sys.argv[2], sys.argv[3:]
planted = json.load(open(truth))["planted"]
lines = json.load(open(truth))["lines"]
secs = {}
for row in open(times):
    fmt, what, s = row.split()
    secs.setdefault((fmt, what), []).append(float(s))
med = {k: statistics.median(v) for k, v in secs.items()}
docs = {f: json.load(open(f"target/compare/formats.{f}.json")) for f in formats}
def answer(doc):
    return {c["ip"]: c["status_4xx"] for c in doc["ips"]}, doc["blocklist"]
base_ips, base_block = answer(docs["combined"])
print(f"\n{lines:,} lines per file, {os.cpu_count()} cores, median of {len(secs[(formats[0], 'one')])} runs each\n")
print("| format | MB | `cat \\| wc -l` MB/s | logwarden 1 thread MB/s | lines/s | all threads MB/s | lines/s | lines/s vs combined (1 / all) | exact planted 4xx, same blocklist |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
for f in formats:
    doc = docs[f]
    mb = doc["stats"]["bytes"] / 1e6
    ips, block = answer(doc)
    exact = all(ips.get(ip) == p["status_4xx"] for ip, p in planted.items())
    same = block == base_block and doc["stats"]["unparsed"] == 0
    r1 = med[("combined", "one")] / med[(f, "one")]
    ra = med[("combined", "all")] / med[(f, "all")]
    print(f"| {f} | {mb:,.0f} | {mb / med[(f, 'pipe')]:,.0f} | {mb / med[(f, 'one')]:,.0f} | {lines / med[(f, 'one')]:,.0f} "
          f"| {mb / med[(f, 'all')]:,.0f} | {lines / med[(f, 'all')]:,.0f} | {r1:.2f} / {ra:.2f} | {'yes' if exact and same else 'no'} |")
PY
rm -f "$times" target/compare/time.$$
