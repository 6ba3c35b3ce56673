#!/usr/bin/env bash
# Short, bounded fuzz run of every target (default 60 s each): bash fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only flags;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
# model_load starts from the small tree-ensemble edge cases (the committed fixtures).
mkdir -p corpus/model_load
cp -n ../tests/fixtures/models/tree_cases/*.onnx corpus/model_load/
for target in v2_request tensor_decode envelope_open message_decode model_load bundle_open names mqtt_gate at_rest_open root_parse log_segment backup_restore; do
    mkdir -p "corpus/$target"
    echo ">> fuzzing $target for ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
