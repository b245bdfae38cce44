#!/usr/bin/env bash
# FSDP on two GPUs (nvidia-h200-x2) with a Gemma-2-9B-shaped model of random weights, through the real command:
# `accelerate launch --config_file configs/accelerate-fsdp*.yaml -m writemypaper train`. Per GPU peak memory is
# nvidia-smi's memory.used (CUDA context and PyTorch's cache included), polled every 200 ms while a step runs.
#
#   bash bench/fsdp_9b.sh model lora-fsdp     # make the model (~18 GB); FSDP2 LoRA: train, kill -9, resume, PEFT-load
#   bash bench/fsdp_9b.sh lora-1gpu qlora-1gpu qlora-fsdp   # one GPU alone, and FSDP1 QLoRA, for the ratios
#   bash bench/fsdp_9b.sh table               # the table of everything measured so far
#
# Each call fits one device command (BUDGET s; steps that no longer fit are skipped). The layers are not compiled
# (EXTRA=compile_layers=false) so that compiling does not eat the budget; EXTRA= compiles them. FSDP shards the
# weights (18.5 GB in bf16 at 9B), not the activations: with `fast`'s rows of 4,096 tokens and no gradient
# checkpointing the activations are a large part of a GPU's peak, so read the ratio with that in mind.
#
# Device calls carry .whl (bash bench/fetch_wheels.sh) as bench/gpu_smoke.sh does; the model stays in $MODEL while
# the machine is warm. Results: $OUT/fsdp.jsonl (one line a run), $OUT/log.txt, $OUT/steps.txt; the table prints last.
# Before train.py gathers the sharded adapter on every rank (see tests/test_distributed.py's _fsdp_worker, which
# does what it must), the FSDP runs train and checkpoint but their final save can fail: the steps say so.
set -u
OUT=${OUT:-/tmp/wmp-fsdp}
BUDGET=${BUDGET:-560}
MODEL=${MODEL:-/tmp/gemma2-9b-random}
STEPS=${STEPS:-8}
EXTRA=${EXTRA:-compile_layers=false}
mkdir -p "$OUT"
export OUT MODEL
cd "$(dirname "$0")/.."
. bench/device_env.sh
# run NAME NEEDS LIMIT CMD...: CMD under a time limit, with every GPU's memory polled; appends a line to fsdp.jsonl
run() {
  local name=$1 needs=$2 limit=$3; shift 3
  if (($(left) < needs)); then
    echo "$name: skipped ($(left) s left, needs $needs)" | tee -a "$OUT/steps.txt"; return 1
  fi
  ((limit > $(left))) && limit=$(left)
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" >>"$LOG"
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/mem-$name.csv" &
  local smi=$! t=$SECONDS
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  echo "$name: rc=$rc, $((SECONDS - t)) s" | tee -a "$OUT/steps.txt"
  python3 - "$name" "$rc" "$((SECONDS - t))" "$OUT" "${RUN_DIR:-}" <<'EOF'
import csv, json, sys
from pathlib import Path
name, rc, secs, out, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
peak = {}
for row in csv.reader(open(out / f"mem-{name}.csv")):
    if len(row) == 2 and row[1].strip().isdigit():
        peak[row[0].strip()] = max(peak.get(row[0].strip(), 0), int(row[1]))
line = {"name": name, "rc": rc, "seconds": secs, "peak_mib_per_gpu": peak}
m = Path(run) / "metrics.json" if run else None
if m and m.is_file():
    d = json.loads(m.read_text())
    line.update({k: d.get(k) for k in ("global_step", "resumed_from", "world_size", "train_loss_first",
                                       "train_loss_last", "train_samples_per_second", "total_parameters")})
with open(out / "fsdp.jsonl", "a") as f:
    f.write(json.dumps(line) + "\n")
EOF
  return $rc
}

TRAIN="-m writemypaper train --data $OUT/prepared model=$MODEL training.eval_strategy=no early_stopping_patience=null \
training.logging_steps=1 training.report_to=none $EXTRA"

make_model() {
  # google/gemma-2-9b's shape (config.json), with Gemma 3's vocabulary size so that every id of the embedded
  # tokenizer (our corpus's text) has a row
  python3 - "$MODEL" <<'EOF'
import sys
sys.path.insert(0, "bench")
import common, torch
from pathlib import Path
from transformers import Gemma2Config, Gemma2ForCausalLM
out = Path(sys.argv[1])
if not (out / "config.json").is_file():
    out.mkdir(parents=True, exist_ok=True)
    shape = dict(common.GEMMA2_2B, vocab_size=262144, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Gemma2ForCausalLM(Gemma2Config(**shape, dtype="bfloat16")).to(torch.bfloat16)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters")
    model.save_pretrained(out)
    common.copy_tokenizer(out)
EOF
  python3 -m writemypaper prepare --input data/sample --out "$OUT/prepared" -q
}

# one GPU alone, the same preset and steps: the baseline of the ratios
one_gpu() {  # one_gpu NAME PRESET
  rm -rf "${OUT:?}/$1"
  RUN_DIR=$OUT/$1 CUDA_VISIBLE_DEVICES=0 run "$1" 150 300 python3 $TRAIN --config "$2" --out "$OUT/$1" \
    training.max_steps=$STEPS training.save_steps=1000
}

# FSDP2 LoRA on every GPU: killed after its checkpoint-2 is complete, resumed to the end, loaded by plain PEFT
lora_fsdp() {
  local run_dir=$OUT/lora-fsdp
  rm -rf "$run_dir"
  # first part: until checkpoint-2 is complete, then kill -9 the whole launch
  (
    CUDA_VISIBLE_DEVICES=$ALL_GPUS setsid accelerate launch --config_file configs/accelerate-fsdp.yaml $TRAIN \
      --config fast --out "$run_dir" training.max_steps=$STEPS training.save_steps=2 >>"$LOG" 2>&1 &
    pid=$!
    for _ in $(seq 1 1500); do
      [ -f "$run_dir/checkpoints/checkpoint-2/writemypaper-complete" ] && break
      kill -0 $pid 2>/dev/null || break
      sleep 0.2
    done
    kill -9 -- -$pid 2>/dev/null
    wait $pid 2>/dev/null
  )
  ls "$run_dir/checkpoints/checkpoint-2" >>"$LOG" 2>&1
  echo "lora-fsdp-killed: $(ls "$run_dir/checkpoints" 2>/dev/null | tr '\n' ' ')" | tee -a "$OUT/steps.txt"
  RUN_DIR=$run_dir CUDA_VISIBLE_DEVICES=$ALL_GPUS run lora-fsdp-resumed 150 300 accelerate launch \
    --config_file configs/accelerate-fsdp.yaml $TRAIN --config fast --out "$run_dir" --resume \
    training.max_steps=$STEPS training.save_steps=2
  # the adapter was written once, and plain PEFT loads it onto the base
  run peft-load 60 180 python3 - "$MODEL" "$run_dir" <<'EOF'
import sys, torch
from pathlib import Path
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, run = sys.argv[1], Path(sys.argv[2])
adapters = sorted(p for p in run.glob("**/adapter_model.safetensors") if "checkpoints" not in p.parts)
assert adapters == [run / "adapter_model.safetensors"], adapters
base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, device_map="cuda:0")
model = PeftModel.from_pretrained(base_model, run)
b = [p for n, p in model.named_parameters() if "lora_B" in n]
assert b and all(p.abs().sum() > 0 for p in b), "lora_B still zero: the adapter did not load or did not train"
print(f"PEFT loaded {len(b)} trained lora_B matrices from {run}")
EOF
}

qlora_fsdp() {
  rm -rf "$OUT/qlora-fsdp"
  RUN_DIR=$OUT/qlora-fsdp CUDA_VISIBLE_DEVICES=$ALL_GPUS run qlora-fsdp 150 300 accelerate launch \
    --config_file configs/accelerate-fsdp-qlora.yaml $TRAIN --config low-memory --out "$OUT/qlora-fsdp" \
    training.max_steps=$STEPS training.save_steps=1000
}

table() {
  [ -f "$OUT/fsdp.jsonl" ] || return 0
  python3 - "$OUT/fsdp.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<20} {'rc':>3} {'s':>5} {'steps':>5} {'world':>5}  peak MiB per GPU      samples/s")
for r in rows:
    peak = " ".join(f"{k}:{v}" for k, v in sorted(r["peak_mib_per_gpu"].items()))
    print(f"{r['name']:<20} {r['rc']:>3} {r['seconds']:>5} {str(r.get('global_step', '')):>5} "
          f"{str(r.get('world_size', '')):>5}  {peak:<20} {r.get('train_samples_per_second') or ''}")
EOF
}

export -f make_model
[ $# -eq 0 ] && set -- model lora-fsdp
for s in "$@"; do
  case $s in
    model) run model 120 400 bash -c make_model ;;
    lora-1gpu) one_gpu lora-1gpu fast ;;
    lora-fsdp) lora_fsdp ;;
    qlora-1gpu) one_gpu qlora-1gpu low-memory ;;
    qlora-fsdp) qlora_fsdp ;;
    table) ;;
    *) echo "unknown step $s" | tee -a "$OUT/steps.txt" ;;
  esac
done
echo
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), $GPU x$(nvidia-smi -L | wc -l)"
cat "$OUT/steps.txt"
table
exit 0
