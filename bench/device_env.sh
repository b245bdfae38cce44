# Sourced by the scripts that run on the device machine (gpu_smoke.sh, fsdp_9b.sh), from the repository root with OUT
# and BUDGET set: the environment they run in, the wheels that machine lacks (.whl/, carried; made by
# bench/fetch_wheels.sh) installed under /tmp/site, LOG, ALL_GPUS, and left() for the seconds of BUDGET still left.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
LOG=$OUT/log.txt
ALL_GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)

if ! python3 -c "import trl, datasets" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || { echo "wheel install failed"; tail -5 "$LOG"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi

left() { echo $((BUDGET - SECONDS)); }
