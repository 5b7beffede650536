#!/usr/bin/env bash
# Builds logwarden with profile-guided optimisation: an instrumented build scans a
# training set (a generated `combined` corpus and every format of fixtures/, on one and
# all threads, from stdin and from gzip), and the release build then uses what it
# recorded to lay out and inline the hot path. Optional: the plain release build is
# what tests and CI use; this one is for users who scan a lot, and for the comparison
# (`PGO=1 benches/compare.sh`).
#
#   benches/pgo.sh          prints the path of the built binary on its last line
#
# Needs llvm-profdata from the toolchain's own LLVM: `rustup component add llvm-tools`.
# Two full release builds: about 10 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
sysroot=$(rustc --print sysroot)
# `|| true`: a missing directory (or find cut short by head) must reach the message below.
profdata=$(find "$sysroot/lib/rustlib" -name llvm-profdata -type f 2>/dev/null | head -1 || true)
if [ -z "$profdata" ]; then
    echo "pgo.sh: llvm-profdata is not in $sysroot; install it with 'rustup component add llvm-tools'" >&2
    exit 1
fi
work=$PWD/target/pgo
rm -rf "$work/profiles" "$work/train"
mkdir -p "$work/profiles" "$work/train"

echo "pgo.sh: instrumented build ..." >&2
RUSTFLAGS="-Cprofile-generate=$work/profiles" CARGO_TARGET_DIR="$work/instrumented" \
    cargo build --locked --release --quiet
bin=$work/instrumented/release/logwarden

echo "pgo.sh: training ..." >&2
train=$work/train
# Another seed than compare.sh's corpus: the same kind of traffic, not the same lines.
python3 benches/gen_corpus.py 100 "$train/combined.log" --seed 7 > /dev/null
gzip -c "$train/combined.log" > "$train/combined.log.gz"
python3 benches/gen_spray.py 200000 "$train/spray.log" > /dev/null
# Every fixture format, repeated to about 4 MB so each weighs in the profile.
for f in fixtures/formats/*.log fixtures/hostile/*.log fixtures/incident/*.log; do
    out=$train/$(basename "$(dirname "$f")")-$(basename "$f")
    for _ in $(seq $((4000000 / $(stat -c %s "$f") + 1))); do cat "$f"; done > "$out"
done
# Findings and unparsed lines are expected here; only a crash would spoil the profile.
scan() { "$bin" scan --output json "$@" > /dev/null; }
scan --threads 1 "$train/combined.log"
scan "$train/combined.log"
scan < "$train/combined.log"
scan "$train/combined.log.gz"
scan --threads 1 "$train/spray.log"
for f in "$train"/formats-*.log "$train"/hostile-*.log "$train"/incident-*.log; do
    scan --threads 1 "$f"
done

echo "pgo.sh: optimised build ..." >&2
"$profdata" merge -o "$work/merged.profdata" "$work/profiles"
RUSTFLAGS="-Cprofile-use=$work/merged.profdata" CARGO_TARGET_DIR="$work/optimized" \
    cargo build --locked --release --quiet
echo "$work/optimized/release/logwarden"
