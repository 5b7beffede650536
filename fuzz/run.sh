#!/bin/sh
# Runs every fuzz target for SECONDS (default 60) each, growing fuzz/corpus/<target>/.
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The machine's stable toolchain builds the
# sanitizer instrumentation with RUSTC_BOOTSTRAP=1. A crash leaves its input under
# fuzz/artifacts/<target>/ and fails the run; copy it into fuzz/corpus/<target>/ once
# fixed, so `cargo test` replays it for good (tests/fuzz_corpus.rs).
set -eu
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
export RUSTC_BOOTSTRAP=1
for target in scan log_format configmap rules sql_literal loki_response; do
    echo "== $target ($SECONDS_EACH s)"
    cargo fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | grep -E "^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)" || true
    if [ -n "$(ls "fuzz/artifacts/$target" 2>/dev/null)" ]; then
        echo "crash in $target: see fuzz/artifacts/$target" >&2
        exit 1
    fi
done
