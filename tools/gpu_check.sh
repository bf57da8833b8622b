#!/usr/bin/env bash
# The prepared GPU check (accelerator speed): one command for a lent GPU machine, sized for ~9 minutes so a
# 15-minute device allowance leaves room for the machine's start and one rerun of a part.
#
#   bash tools/gpu_check.sh [all|decode|train|flags]      (default all; OUT=dir for the results)
#   TINY=1 PYTHON=.venv/bin/python bash tools/gpu_check.sh  (smoke test of the script on any machine)
#
# Runs with the machine image's python3 (JAX with CUDA, flax, optax, orbax) and this checkout on PYTHONPATH:
# nothing is installed. Each part is its own process under its own timeout, so one that fails or hangs
# costs only its share; every part writes a JSON file under $OUT and its status and stderr's tail to
# $OUT/parts.log (few files: the device tool brings back at most 8).
#   decode: tools/bench_gpu.py decode at batch 64 and 256 vs the HBM roofline, the bf16 sampler/trainer
#           log-prob gap, a kernel profile of one decode call at 256
#   flags:  the decode at 256 again with XLA's command buffers (CUDA graphs) extended to while loops and
#           conditionals, and with them off: how much of a decode step is launch and loop overhead
#   train:  one SFT step of 8 x 2048 tokens (dot remat) vs peak bf16 FLOP/s, with a kernel profile
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 REASONING_RL_COMPILE_CACHE=off
py=${PYTHON:-python3}
what=${1:-all}

part() {  # part NAME TIMEOUT_S [ENV=VALUE...] -- ARGS...: one bench_gpu.py process
    local name=$1 limit=$2
    shift 2
    local envs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local t0=$SECONDS
    env "${envs[@]}" timeout "$limit" "$py" tools/bench_gpu.py "$@" ${TINY:+--tiny} >"$out/$name.json" \
        2>"/tmp/gpu_check_$name.err"
    local rc=$?
    echo "$name rc=$rc s=$((SECONDS - t0)) ${envs[*]} $*" | tee -a "$out/parts.log"
    tail -n "$([ $rc = 0 ] && echo 3 || echo 40)" "/tmp/gpu_check_$name.err" | sed "s/^/  $name: /" | tee -a "$out/parts.log"
}

"$py" - >"$out/env.json" <<'EOF'
import json, os, jax
print(json.dumps({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
                  "kind": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")}))
EOF
cat "$out/env.json"

case $what in all|decode) part decode 240 -- --skip-train --profile ;; esac
case $what in all|flags)
    part decode_cmdbuf_while 150 XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL -- \
        --skip-train --batches 256 --no-gap
    part decode_cmdbuf_off 150 XLA_FLAGS=--xla_gpu_enable_command_buffer= -- --skip-train --batches 256 --no-gap ;;
esac
case $what in all|train) part train 200 -- --skip-decode --train-batch 8 --remat dots --profile ;; esac
echo "results: $out"
