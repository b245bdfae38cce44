#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the GPU machine lacks, for bench/gpu_smoke.sh to install there (no network
# there): trl, datasets and their missing needs, omegaconf, peft (the version tested here), the server's stack
# (fastapi, pydantic, uvicorn, sse-starlette and what they need beyond the image), bitsandbytes slimmed to
# its CPU and CUDA 13.0 libraries (43 MB -> 3.6 MB, under the 64 MiB a call may carry), liger-kernel, and the
# embedded model's tokenizer, gzipped, for the random-weight Gemma 2 the benchmarks make.
#
#   bash bench/fetch_wheels.sh      # then: device run with carry [".whl"]: bash bench/gpu_smoke.sh one
#   (Unsloth, for bench/bench_unsloth.py, apart: bash bench/fetch_unsloth.sh fills .whl/unsloth/)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
mkdir -p .whl
PY=${PYTHON:-python3}
for spec in trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 omegaconf==2.4.0 peft==0.21.2 \
  bitsandbytes==0.50.2 liger-kernel==0.8.5 \
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing_extensions==4.16.0 opentelemetry-api==1.45.2 uvicorn==0.54.0 sse-starlette==3.7.0; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$spec"
done
$PY - <<'EOF'
import glob, os, re, zipfile
src = glob.glob(".whl/bitsandbytes-*.whl")[0]
keep = re.compile(r"libbitsandbytes_(cpu|cuda130)\.so")
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as zo:
    for info in zi.infolist():
        if info.filename.endswith(".so") and not keep.search(info.filename):
            continue
        data = zi.read(info.filename)
        if info.filename.endswith("/RECORD"):
            data = "".join(l + "\n" for l in data.decode().splitlines()
                           if not (".so," in l and not keep.search(l.split(",")[0]))).encode()
        zo.writestr(info, data)
os.replace(src + ".tmp", src)
EOF
TOK=${TOKENIZER_DIR:-$HOME/.cache/writemypaper/models/gemma3-270m}  # made by any first use of the embedded model
mkdir -p .whl/gemma3-tokenizer
gzip -c "$TOK/tokenizer.json" >.whl/gemma3-tokenizer/tokenizer.json.gz
cp "$TOK/tokenizer_config.json" "$TOK/chat_template.jinja" .whl/gemma3-tokenizer/
du -sh .whl
