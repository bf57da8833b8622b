#!/usr/bin/env bash
# The prepared GPU check (accelerator speed): one command for a lent GPU machine, sized to end inside ~9 minutes
# (a deadline over all parts) so a 15-minute device allowance leaves room for the machine's start.
#
#   bash tools/gpu_check.sh [main|more|gap|e2b|async|all]  (default main; OUT=dir for the results)
#   TINY=1 PYTHON=.venv/bin/python bash tools/gpu_check.sh all   (smoke test of the script on any machine;
#   on the device run main and more as two commands: each leaves at most 8 files, what the tool brings back)
#   NO_GAP=1: skip the bf16 log-prob gap (a second sampler program to compile)
#   ONLY="decode decode_cublas ...": run only the named parts of the chosen set (what changed since a run)
#
# Runs with the machine image's python3 (JAX with CUDA, flax, optax, orbax) and this checkout on PYTHONPATH:
# nothing is installed. Each part is its own process under its own timeout, so one that fails or hangs
# costs only its share; every part writes a JSON file under $OUT and its status and stderr's tail to
# $OUT/parts.log (at most 8 files: what the device tool brings back).
# main (at most GPU_CHECK_BUDGET_S=560 s, one device command; parts in this order):
#   decode:  tools/bench_gpu.py decode at batch 64 and 256 vs the HBM roofline with the default kernels
#            (attention_impl auto), the bf16 sampler/trainer log-prob gap, a kernel profile at 256, and the
#            optimised HLO of its programs ($OUT/decode_hlo.tgz)
#   train:   one SFT step of 8 x 2048 tokens (dot remat, auto) vs peak bf16 FLOP/s, with a kernel profile
#   decode_xla: decode at 256 without kernels (attention_impl xla), no profile: what the kernels change
#   kernels: every attention kernel against the XLA path at the bench's attention shape, with both times
#            (tools/bench_attention_kernels.py; kernels that fail there show their error, not a crash)
# more (about 5 minutes, a second command if time is left):
#   decode_cublas: decode with every matrix product on cuBLAS (XLA's Triton GEMMs off: the fused gate/up
#            projection ran at 40% of its compute floor as a Triton GEMM)
#   decode_scan: decode at 256 over the stacked cache and weights (decode_layers scan), same sitting
#   decode_f32: decode at 256 from float32 master weights (what a GRPO run's sampler gets)
#   decode_cmdbuf: decode at 256 with XLA's command buffers (CUDA graphs) extended to while loops and
#            conditionals: how much of a step is launch and loop overhead
#   train_xla: the train step without kernels
# gap (about 3 minutes): the bf16 sampler/trainer log-prob gap, the same with model.batch_invariant (0 on
#   CPU; its sampling time next to the standard one) and the GEMMs' batch invariance
#   (tools/bench_gpu.py --gap-only), with XLA's defaults and with --xla_allow_excess_precision=false (XLA may
#   skip a bf16 rounding inside a fusion; the decode step and the training forward fuse differently)
# e2b (about 4 minutes): decode at 64 and 256 and the train step at Gemma 4 E2B's shape (tools/bench_gpu.py
#   --shape gemma4-e2b): per-layer inputs, a cache of 12 sliding and 3 full (512-wide) layers read by 20 more; the
#   roofline counts a sliding layer's window only, so the gap to it shows what reading every slot costs
# async (about 1.5 minutes): tools/bench_async.py on the machine's CPUs (JAX_PLATFORMS=cpu, split into a sampler
#   and a trainer device): synchronous vs asynchronous GRPO at W1's shape where the two devices have cores to
#   spare (on 2 cores the synchronous step already keeps both busy, so no schedule can reach the 0.65 target)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 REASONING_RL_COMPILE_CACHE=off
py=${PYTHON:-python3}
if ! "$py" -c "import reasoning_rl.models" 2>/dev/null; then  # not installed: the package-dir map by links
    shim=$(mktemp -d)/src
    mkdir -p "$shim/reasoning_rl"
    for f in "$PWD"/reasoning_rl/*; do ln -s "$f" "$shim/reasoning_rl/"; done
    ln -s "$PWD/models" "$shim/reasoning_rl/models"
    ln -s "$PWD/sharding" "$shim/reasoning_rl/sharding"
    export PYTHONPATH=$shim:$PYTHONPATH
fi
what=${1:-main}
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-560}))  # every part ends (and logs) inside the device command's limit

part() {  # part NAME TIMEOUT_S SCRIPT [ENV=VALUE...] -- ARGS...: one python process
    local name=$1 limit=$2 script=$3
    shift 3
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    local envs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local left=$((deadline - SECONDS - 5))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then echo "$name skipped: the run's budget is spent" | tee -a "$out/parts.log"; return; fi
    local t0=$SECONDS
    env "${envs[@]}" timeout "$limit" "$py" "$script" "$@" >"$out/$name.json" 2>"/tmp/gpu_check_$name.err"
    local rc=$?
    echo "$name rc=$rc s=$((SECONDS - t0)) ${envs[*]} $script $*" | tee -a "$out/parts.log"
    tail -n "$([ $rc = 0 ] && echo 3 || echo 40)" "/tmp/gpu_check_$name.err" | sed "s/^/  $name: /" | tee -a "$out/parts.log"
}
tiny=${TINY:+--tiny}
quick=${TINY:+--quick}
B=tools/bench_gpu.py

"$py" - >"$out/env.json" <<'EOF'
import json, os, jax
print(json.dumps({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
                  "kind": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")}))
EOF
cat "$out/env.json"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv | tee -a "$out/parts.log"

case $what in main|all)  # the most wanted figures first: what a cut-short run returns is still useful
    rm -rf /tmp/gpu_check_hlo
    part decode 200 $B XLA_FLAGS="--xla_dump_to=/tmp/gpu_check_hlo --xla_dump_hlo_as_text" -- \
        --skip-train --profile ${NO_GAP:+--no-gap} $tiny
    # the decode programs as XLA optimised them (fusions, copies, kernels): for reading off the device
    find /tmp/gpu_check_hlo -name '*after_optimizations.txt' -size +20k 2>/dev/null | tar czf "$out/decode_hlo.tgz" -T - 2>/dev/null
    part train 150 $B -- --skip-decode --train-batch 8 --remat dots --profile $tiny
    part decode_xla 100 $B -- --skip-train --attention-impl xla --batches 256 --no-gap $tiny
    part kernels 110 tools/bench_attention_kernels.py -- $quick ;;
esac
case $what in more|all)
    part decode_cublas 150 $B XLA_FLAGS=--xla_gpu_enable_triton_gemm=false -- \
        --skip-train --batches 64,256 --no-gap $tiny
    part decode_scan 150 $B -- --skip-train --batches 256 --no-gap --decode-layers scan $tiny
    part decode_f32 150 $B -- --skip-train --batches 256 --no-gap --decode-param-dtype float32 $tiny
    part decode_cmdbuf 150 $B XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL -- \
        --skip-train --batches 256 --no-gap $tiny
    part train_xla 150 $B -- --skip-decode --train-batch 8 --remat dots --attention-impl xla $tiny ;;
esac
case $what in gap|all)
    part gap 200 $B -- --gap-only $tiny
    part gap_noexcess 200 $B XLA_FLAGS=--xla_allow_excess_precision=false -- --gap-only $tiny ;;
esac
case $what in e2b|all)
    part decode_e2b 200 $B -- --shape gemma4-e2b --skip-train --batches 64,256 --no-gap $tiny
    part train_e2b 150 $B -- --shape gemma4-e2b --skip-decode --train-batch 8 --remat dots $tiny ;;
esac
case $what in async|all)  # not the GPU: the host's own cores, which a 2-core CI machine lacks
    part async_cpu 150 tools/bench_async.py JAX_PLATFORMS=cpu -- ${TINY:+--steps 3 --warmup 1} ;;
esac
echo "results: $out"
