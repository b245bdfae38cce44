#!/usr/bin/env bash
# Everything the GPU machine runs for bench/RESULTS.md, in one call, within a time budget:
#
#   bash bench/gpu_smoke.sh one    # one H200: seed / fast / low-memory side by side, generation, GPU tests, probes
#   bash bench/gpu_smoke.sh two    # two H200s: seed, fast on one GPU then on two (DDP), GPU tests, low-memory
#   bash bench/gpu_smoke.sh levers # one H200: each lever of `fast` in its own process (a sync, CUDA graphs)
#   bash bench/gpu_smoke.sh ab     # one H200: the same levers toggled inside one process (bench_train.py --ab)
#   bash bench/gpu_smoke.sh final  # one H200: GPU tests, generation with a static cache, serving 64 clients
#   bash bench/gpu_smoke.sh round3 # one GPU: seed / fast / low-memory and Unsloth 4-bit and bf16, same model and data
#   bash bench/gpu_smoke.sh round3-gen  # one GPU: generation at batch 64 vs 256 with a static cache, 64 clients served
#   bash bench/gpu_smoke.sh seed fast tests   # named steps (see run_step below)
#
# Missing packages come as wheels in .whl/ (bash bench/fetch_wheels.sh, carried); the model is made there, random weights.
# Results go to $OUT (train.jsonl, generate.jsonl, peak.json, pytest.txt, steps.txt, log.txt); the tables print last.
# Each step has a time limit, and steps that no longer fit in BUDGET seconds are skipped, so the tables always print.
set -u
MODE=${1:-one}
OUT=${OUT:-/tmp/wmp-bench}
BUDGET=${BUDGET:-520}
MODEL=${MODEL:-/tmp/gemma2-2b-random}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
. bench/device_env.sh
# Single-GPU steps see one GPU (the Trainer would otherwise wrap the model in DataParallel); fast-2gpu sees them all.
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
# step NAME NEEDS LIMIT CMD...: run CMD with a time limit of LIMIT s if at least NEEDS s of the budget are left.
step() {
  local name=$1 needs=$2 limit=$3; shift 3
  if (($(left) < needs)); then
    echo "$name: skipped ($(left) s left, needs $needs)" | tee -a "$OUT/steps.txt"; return 0
  fi
  ((limit > $(left))) && limit=$(left)
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" >>"$LOG"
  local t=$SECONDS from=$(($(wc -l <"$LOG") + 1))
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $((SECONDS - t)) s" | tee -a "$OUT/steps.txt"
  [ $rc -ne 0 ] && tail -n +"$from" "$LOG" | grep -E "Error|error:" | tail -3
  return 0
}

TRAIN="python3 bench/bench_train.py --model $MODEL --peak $OUT/peak.json --out $OUT/train.jsonl"
UNSLOTH="env PYTHONPATH=/tmp/site-unsloth:$PYTHONPATH python3 bench/bench_unsloth.py --model $MODEL --peak $OUT/peak.json \
  --out $OUT/train.jsonl"
# Unsloth's wheels (.whl/unsloth/, bench/fetch_unsloth.sh) go to a target of their own, ahead of ours for its runs only
unsloth_site() {
  [ -d /tmp/site-unsloth ] && return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-unsloth \
    .whl/unsloth/*.whl >>"$LOG" 2>&1 || { echo "unsloth wheel install failed" | tee -a "$OUT/steps.txt"; return 1; }
}

step env 5 60 bash -c "nvidia-smi -L; python3 -c 'import sys; sys.path.insert(0, \"bench\"); import common, json; print(json.dumps(common.environment()))'"
step model 60 240 python3 bench/common.py make-model "$MODEL"
step peak 20 60 python3 bench/common.py peak "$OUT/peak.json"

# Each named step, then the lists the two calls run (`one`, `two`); any other arguments are step names.
run_step() {
  case $1 in
    # Each variant: warm-up steps (compilation, autotuning), then 3 timed blocks of steps; tokens/s is the median block
    seed) step seed 60 150 $TRAIN --preset seed --warmup 2 --steps 4 --repeats 3 ;;
    fast) step fast 90 180 $TRAIN --preset fast --warmup 3 --steps 5 --repeats 3 --stacks-after 100 \
      --profile "$OUT/profile-fast.txt" ;;
    # The levers of the fast preset, each in its own process against the preset as it is (performance round 2;
    # keeping TRL's metrics on the device, measured in runs 10-11 and found to change nothing, was removed)
    fast-nofilter) step fast-nofilter 80 150 $TRAIN --preset fast --name "fast, no nan/inf filter on the logged loss" \
      --warmup 2 --steps 12 --set training.logging_nan_inf_filter=false ;;
    fast-graphs) step fast-graphs 90 170 $TRAIN --preset fast --name "fast, layers compiled with CUDA graphs" \
      --warmup 3 --steps 12 --set training.logging_nan_inf_filter=false --compile-mode reduce-overhead --stacks-after 140 ;;
    low-memory-nofilter) step low-memory-nofilter 90 170 $TRAIN --preset low-memory \
      --name "low-memory, no nan/inf filter on the logged loss" --warmup 2 --steps 8 \
      --set training.logging_nan_inf_filter=false ;;
    # The same levers, each toggled in blocks of steps inside one process (bench_train.py --ab): ratios that share
    # the compiled kernels, the GPU's state and the host's, which separate processes did not
    fast-ab-filter) step fast-ab-filter 70 140 $TRAIN --preset fast --name "fast, nan/inf filter off/on" --warmup 2 \
      --steps 16 --ab nan-filter:2 ;;
    low-memory-ab-filter) step low-memory-ab-filter 80 150 $TRAIN --preset low-memory \
      --name "low-memory, nan/inf filter off/on" --warmup 2 --steps 12 --ab nan-filter:2 ;;
    fast-eager) step fast-eager 80 150 $TRAIN --preset fast --name "fast, eager attention" --warmup 2 --steps 6 \
      --set attn_implementation=eager ;;
    low-memory) step low-memory 90 170 $TRAIN --preset low-memory --warmup 3 --steps 5 --repeats 3 ;;
    # Unsloth on the same model and data (bench/bench_unsloth.py; wheels from bench/fetch_unsloth.sh, installed apart
    # in /tmp/site-unsloth). Its compiler failed on torch 2.11 before (InductorError), so it runs off first, then on.
    unsloth-4bit) unsloth_site && step unsloth-4bit 80 170 env UNSLOTH_COMPILE_DISABLE=1 $UNSLOTH --config 4bit \
      --name "Unsloth 4-bit QLoRA (notebook recipe), compiler off" --warmup 3 --steps 4 --repeats 3 ;;
    unsloth-bf16) unsloth_site && step unsloth-bf16 80 170 env UNSLOTH_COMPILE_DISABLE=1 $UNSLOTH --config bf16 \
      --name "Unsloth bf16 LoRA, compiler off" --warmup 3 --steps 5 --repeats 3 ;;
    unsloth-4bit-compiled) unsloth_site && step unsloth-4bit-compiled 80 200 $UNSLOTH --config 4bit \
      --name "Unsloth 4-bit QLoRA (notebook recipe), compiler on" --warmup 3 --steps 4 --repeats 3 --stacks-after 150 ;;
    unsloth-bf16-compiled) unsloth_site && step unsloth-bf16-compiled 80 240 $UNSLOTH --config bf16 \
      --name "Unsloth bf16 LoRA, compiler on" --warmup 3 --steps 5 --repeats 3 --stacks-after 200 ;;
    low-memory-compile) step low-memory-compile 90 170 $TRAIN --preset low-memory --name "low-memory, compiled layers" \
      --warmup 3 --steps 6 --set compile_layers=true ;;
    fast-plain) step fast-plain 80 150 $TRAIN --preset fast --name "fast, layers not compiled" --warmup 2 --steps 6 \
      --set compile_layers=false ;;
    low-memory-8k) step low-memory-8k 70 120 $TRAIN --preset low-memory --name "low-memory, rows of 8192" \
      --warmup 2 --steps 6 --set training.per_device_train_batch_size=4 --set training.per_device_eval_batch_size=4 \
      --set training.pad_to_multiple_of=8192 ;;
    fast-liger) step fast-liger 80 150 $TRAIN --preset fast --name "fast + liger kernels" --warmup 2 --steps 6 \
      --set training.use_liger_kernel=true ;;
    rows) for L in 4096 8192 16384; do
        step "rows-flex-$L" 40 60 python3 bench/bench_rows.py --length $L --stacks-after 50 --out "$OUT/rows.jsonl"
      done
      step rows-eager-4096 20 40 python3 bench/bench_rows.py --length 4096 --attn eager --out "$OUT/rows.jsonl"
      step rows-compiled-4096 40 90 python3 bench/bench_rows.py --length 4096 --compile-layers --stacks-after 80 \
        --out "$OUT/rows.jsonl" ;;
    generate) step generate 100 170 python3 bench/bench_generate.py --model "$MODEL" --notebook-samples 2 \
      --batch-sizes 64 --out "$OUT/generate.jsonl" ;;
    generate-b8) step generate-b8 50 80 python3 bench/bench_generate.py --model "$MODEL" --notebook-samples 0 \
      --batch-sizes 8 --out "$OUT/generate.jsonl" ;;
    # Evaluation at scale (up to 512 new tokens): batch sizes, a static KV cache (compiled decoding), and
    # transformers' continuous batching, each against batch 64 with the dynamic cache in the same run.
    generate-scale)
      G="python3 bench/bench_generate.py --model $MODEL --notebook-samples 0 --max-new-tokens 512 --out $OUT/generate.jsonl"
      step gen-dynamic 60 150 $G --batch-sizes 64 256
      step gen-static 60 200 $G --batch-sizes 64 256 --static-cache
      step gen-continuous 60 150 $G --batch-sizes --continuous 256 ;;
    gen-static) G="python3 bench/bench_generate.py --model $MODEL --notebook-samples 0 --max-new-tokens 512 --out $OUT/generate.jsonl"
      step gen-dynamic 60 120 $G --batch-sizes 64 256
      step gen-static 60 170 $G --batch-sizes 64 --static-cache ;;
    # batch 64 with the dynamic cache (today's `evaluate`) against batch 256 with a static cache, and static at 64
    gen-256) G="python3 bench/bench_generate.py --model $MODEL --notebook-samples 0 --max-new-tokens 512 --out $OUT/generate.jsonl"
      step gen-dynamic-64 50 100 $G --batch-sizes 64
      step gen-static-256 80 220 $G --batch-sizes 256 --static-cache
      step gen-static-64 60 150 $G --batch-sizes 64 --static-cache ;;
    # 64 clients without the fact check (its Kiwi model can't be carried to this machine)
    serve-nofc) step serve-64-nofc 40 150 python3 bench/bench_serve.py --model "$MODEL" --requests 64 --stream 8 \
        --max-tokens 256 --max-batch-size 64 --no-fact-check --out "$OUT/serve.jsonl" ;;
    # Serving on the GPU: 64 clients at once against `serve`'s own app (random-weight 2B shape, 256 tokens each)
    serve) step serve-64 40 110 python3 bench/bench_serve.py --model "$MODEL" --requests 64 --stream 8 --max-tokens 256 \
        --max-batch-size 64 --out "$OUT/serve.jsonl"
      step serve-64-batch8 40 110 python3 bench/bench_serve.py --model "$MODEL" --requests 64 --stream 8 \
        --max-tokens 256 --max-batch-size 8 --out "$OUT/serve.jsonl" ;;
    gpu-tests) step tests 120 300 python3 -m pytest -m gpu tests/test_gpu.py tests/test_grounding.py::test_grounding_on_cuda \
      -q -p no:cacheprovider -o addopts=-rA --junit-xml="$OUT/pytest.xml" ;;
    tests) step tests 120 300 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -o addopts=-rA \
      --junit-xml="$OUT/pytest.xml" ;;
    fast-1gpu) step fast-1gpu 100 180 $TRAIN --preset fast --name fast-1gpu --warmup 3 \
      --steps 8 --profile "$OUT/profile-fast-1gpu.txt" ;;
    fast-2gpu) CUDA_VISIBLE_DEVICES=$ALL_GPUS step fast-2gpu 120 240 accelerate launch --config_file configs/accelerate-ddp.yaml --num_processes 2 \
      bench/bench_train.py --model "$MODEL" --peak "$OUT/peak.json" --out "$OUT/train.jsonl" --preset fast \
      --name fast-2gpu --warmup 3 --steps 8 --profile "$OUT/profile-fast-2gpu.txt" ;;
    fast-2gpu-buckets) CUDA_VISIBLE_DEVICES=$ALL_GPUS step fast-2gpu-buckets 120 240 accelerate launch \
      --config_file configs/accelerate-ddp.yaml --num_processes 2 bench/bench_train.py --model "$MODEL" \
      --peak "$OUT/peak.json" --out "$OUT/train.jsonl" --preset fast --name "fast-2gpu, one bucket, no buffer sync" \
      --warmup 3 --steps 8 --set training.ddp_bucket_cap_mb=512 --set training.ddp_broadcast_buffers=false \
      --profile "$OUT/profile-fast-2gpu-buckets.txt" ;;
    *) echo "unknown step $1" | tee -a "$OUT/steps.txt" ;;
  esac
}
case $MODE in
  one) STEPS="seed fast fast-plain low-memory generate tests rows fast-liger" ;;
  levers) STEPS="seed fast fast-nofilter fast-graphs low-memory low-memory-nofilter" ;;
  final) STEPS="gpu-tests gen-static serve" ;;
  ab) STEPS="seed fast-ab-filter low-memory-ab-filter fast-graphs" ;;
  two) STEPS="seed fast-1gpu fast-2gpu tests low-memory low-memory-compile" ;;
  round3) STEPS="seed fast low-memory unsloth-4bit unsloth-bf16 unsloth-4bit-compiled" ;;  # performance round 3
  round3-gen) STEPS="gen-256 serve-nofc" ;;
  *) STEPS="$*" ;;
esac
for s in $STEPS; do
  run_step "$s"
  # A fast preset that failed: the same with eager attention, to tell a flex attention problem from another.
  if [ "$s" = fast ] && ! grep -q '"name": "fast"' "$OUT/train.jsonl" 2>/dev/null; then run_step fast-eager; fi
done

[ -f "$OUT/pytest.xml" ] && grep -E "[0-9]+ (passed|failed|error|skipped).* in [0-9.]+s" "$LOG" | tail -1 >"$OUT/pytest.txt"
echo
echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x$(nvidia-smi -L | wc -l)"
cat "$OUT/steps.txt"
[ -f "$OUT/peak.json" ] && python3 -c "import json; d=json.load(open('$OUT/peak.json')); print('bf16 matmul', round(d['bf16_matmul_tflops']), 'TFLOP/s;', json.dumps(d['versions']))"
[ -f "$OUT/train.jsonl" ] && python3 bench/bench_train.py --table "$OUT/train.jsonl" --baseline seed
grep -q fast-1gpu "$OUT/train.jsonl" 2>/dev/null && python3 bench/bench_train.py --table "$OUT/train.jsonl" --baseline fast-1gpu
[ -f "$OUT/generate.jsonl" ] && python3 bench/bench_generate.py --table "$OUT/generate.jsonl"
[ -f "$OUT/rows.jsonl" ] && python3 bench/bench_rows.py --table "$OUT/rows.jsonl"
[ -f "$OUT/serve.jsonl" ] && cat "$OUT/serve.jsonl"
for f in "$OUT"/profile-*.txt; do [ -f "$f" ] && { echo "$f"; head -14 "$f"; }; done
[ -f "$OUT/pytest.txt" ] && cat "$OUT/pytest.txt"
exit 0
