#!/usr/bin/env bash
# Audit a fine-tuned model and gate on its generalization bound, offline, on the built-in
# digits example (scikit-learn's 8x8 digits and the tiny CNN hessaudit.zoo:digits_cnn).
#
#   examples/ci/gate.sh [OUT_DIR]         (default OUT_DIR: ./hessaudit-ci)
#
# Exit code: 0 = every gate passed, 1 = something could not run, 2 = a gate failed.
# Environment:
#   HESSAUDIT  the hessaudit command (default: hessaudit)
#   PYTHON     the Python with hessaudit installed (default: python3)
#   BASELINE   an accepted audit JSON to compare with (default: OUT_DIR/baseline.json,
#              if it exists). To accept a run's model: cp OUT_DIR/audit.json BASELINE
#   GITHUB_STEP_SUMMARY  when set (GitHub Actions), the markdown reports are appended to it.
#
# Writes to OUT_DIR: pretrained/finetuned checkpoints, audit.json, summary.md, report.html,
# and with a baseline compare.json and compare.md.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-hessaudit-ci}
hessaudit=${HESSAUDIT:-hessaudit}
python=${PYTHON:-python3}
config="$here/hessaudit.toml"
mkdir -p "$out" || exit 1
rm -f "$out/compare.md" "$out/compare.json"

# 1. The model to gate. A real pipeline fine-tunes its own model here; this one pretrains the
#    digits CNN on a 5-class task and fine-tunes it on the 10 digits (a few seconds on a CPU).
#    The fine-tuning could equally be hessaudit's own command, e.g.
#      hessaudit finetune --model hessaudit.zoo:digits_cnn --data digits --loss ce \
#        --pretrained "$out/pretrained.safetensors" --epochs 3 --lr 3e-3 --out "$out/run"
#    and then audit "$out/run/final.safetensors".
"$python" "$here/make_checkpoints.py" "$out" --epochs 3 || exit 1

# 2. Audit it, with the gates of hessaudit.toml (a flag such as --max-bound would override).
#    Every training example is audited, so the bound is the theorem's; --samples N would be
#    faster on a big data set but makes it an estimate (bound_kind in the JSON says so).
status=0
"$hessaudit" measure "$out/pretrained.safetensors" "$out/finetuned.safetensors" \
    --model hessaudit.zoo:digits_cnn --data digits --eval-data digits \
    --config "$config" --json "$out/audit.json" --summary-md "$out/summary.md" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 2 ]; then
    echo "hessaudit measure could not run (exit $status)" >&2
    exit 1
fi

# 3. A page for people: open it, or keep it as a CI artifact.
"$hessaudit" report "$out/audit.json" --out "$out/report.html" || exit 1

# 4. Against the last accepted model, if there is one.
baseline=${BASELINE:-$out/baseline.json}
if [ -f "$baseline" ]; then
    compare_status=0
    "$hessaudit" compare "$baseline" "$out/audit.json" --config "$config" \
        --json "$out/compare.json" --summary-md "$out/compare.md" || compare_status=$?
    if [ "$compare_status" -ne 0 ] && [ "$compare_status" -ne 2 ]; then
        echo "hessaudit compare could not run (exit $compare_status)" >&2
        exit 1
    fi
    [ "$compare_status" -eq 2 ] && status=2
else
    echo "no baseline at $baseline: skipping the comparison" >&2
fi

if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat "$out/summary.md" >> "$GITHUB_STEP_SUMMARY"
    [ -f "$out/compare.md" ] && cat "$out/compare.md" >> "$GITHUB_STEP_SUMMARY"
fi
if [ "$status" -eq 0 ]; then
    echo "hessaudit: all gates passed" >&2
else
    echo "hessaudit: a gate failed (see $out/summary.md$([ -f "$out/compare.md" ] && echo " and $out/compare.md"))" >&2
fi
exit "$status"
