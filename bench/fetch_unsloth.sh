#!/usr/bin/env bash
# Fill .whl/unsloth/ (git-ignored, carried with .whl) with what bench/bench_unsloth.py needs on the GPU machine beyond
# bench/fetch_wheels.sh's wheels: Unsloth and the versions it accepts there (transformers <= 5.17, the image's; trl
# <= 1.15; datasets < 5). They are installed on the device into their own --target (/tmp/site-unsloth), put before
# ours on PYTHONPATH for Unsloth's runs only: Unsloth is not a dependency of the product. The unsloth wheel is slimmed
# as fetch_wheels.sh slims bitsandbytes: its web UI (studio/, 80 MB unpacked) and CLI, which training never imports,
# are dropped (28.6 MB -> about 2 MB).
#
#   bash bench/fetch_wheels.sh && bash bench/fetch_unsloth.sh   # then: device run with carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl/unsloth
PY=${PYTHON:-python3}
for spec in unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 xformers==0.0.35 torchao==0.18.0 \
  cut_cross_entropy==25.1.1 nest_asyncio==1.6.0; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl/unsloth "$spec"
done
$PY - <<'EOF'
import glob, os, zipfile
src = glob.glob(".whl/unsloth/unsloth-*-py3-none-any.whl")[0]
drop = ("studio/", "unsloth_cli/")
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as zo:
    for info in zi.infolist():
        if info.filename.startswith(drop):
            continue
        data = zi.read(info.filename)
        if info.filename.endswith("/RECORD"):
            data = "".join(l + "\n" for l in data.decode().splitlines() if not l.startswith(drop)).encode()
        elif info.filename.endswith("/entry_points.txt"):  # the CLI's console script points into unsloth_cli
            data = b""
        zo.writestr(info, data)
os.replace(src + ".tmp", src)
EOF
du -sh .whl/unsloth .whl
