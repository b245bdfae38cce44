"""Throughput and peak memory of `writemypaper prepare` on a synthetic corpus in the distributed layout.

    python bench/bench_prepare.py --docs 100000 --granularity entire

Generates (once, under --workdir) many list-of-wrappers .json files of Korean-like documents plus a .zip holding
some more, runs `python -m writemypaper prepare` on them in a subprocess, and prints a markdown table row with
documents/s and the peak RSS of that subprocess. Run one granularity per invocation: the peak RSS comes from
getrusage(RUSAGE_CHILDREN), which is the largest of all children this process has waited for.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------------------
# synthetic corpus: sentences from a pool, so 100k documents are made in seconds but lengths and scripts are realistic

SYLLABLES = "가나다라마바사아자차카타파하거너더러머버서어저처커터퍼허고노도로모보소오조초코토포호구누두루무부수우주추쿠투푸후그느드르므브스으즈츠크트프흐기니디리미비시이지치키티피히한국연학정사회문화경제교육분석결과"
ENDINGS = ["을", "를", "이", "가", "은", "는", "의", "에", "에서", "으로", "와", "과", "도"]
VERBS = ["분석하였다.", "비교하였다.", "확인하였다.", "나타났다.", "제시하였다.", "논의하였다.", "검토하였다.", "규명하였다."]
EXTRAS = ["對句", "弄絃", "風流", "한ㆍ중ㆍ일", "SNS", "COVID-19", "25℃", "87%", "1,200명", "2019년", "F=12.47", "p<.001"]
FIELDS = ["인문학", "사회과학", "공학", "자연과학", "의약학", "농수해양", "예술체육", "복합학"]


def _sentence(rng: random.Random) -> tuple[str, str]:
    """(sentence, its summary): the summary keeps about 40% of the words and the verb."""
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))) + rng.choice(ENDINGS) for _ in range(rng.randint(6, 14))]
    if rng.random() < 0.5:
        words.insert(rng.randrange(len(words)), rng.choice(EXTRAS))
    keep = words[: max(2, int(len(words) * 0.4))]
    verb = rng.choice(VERBS)
    return " ".join(words + [verb]), " ".join(keep + [verb])


def _document(rng: random.Random, pool: list[tuple[str, str]], i: int) -> dict:
    target = rng.randint(300, 700)
    sents: list[tuple[str, str]] = []
    while sum(len(s) + 1 for s, _ in sents) < target:
        sents.append(rng.choice(pool))
    cuts = sorted(rng.sample(range(1, len(sents)), min(rng.randint(1, 3), len(sents) - 1)))
    groups = [sents[a:b] for a, b in zip([0, *cuts], [*cuts, len(sents)])]
    sections = [{"orginal_text": " ".join(s for s, _ in g), "summary_text": " ".join(m for _, m in g)} for g in groups]
    ipc = FIELDS[i % len(FIELDS)]
    return {
        "doc_id": f"BENCH-{i:07d}", "title": f"{ipc} 분야의 합성 논문 {i}", "date": "2020-01-01", "doc_type": "학술논문",
        "issued_by": "벤치마크학회", "author": "홍길동", "reg_no": f"R{i}", "ipc": ipc,
        "summary_entire": [{"orginal_text": " ".join(p["orginal_text"] for p in sections),
                            "summary_text": " ".join(p["summary_text"] for p in sections)}],
        "summary_section": sections,
    }


def make_corpus(root: Path, docs: int, per_file: int, zipped_files: int, seed: int = 0) -> None:
    manifest = {"docs": docs, "per_file": per_file, "zipped_files": zipped_files, "seed": seed}
    marker = root / ".manifest.json"  # hidden, so prepare does not read it
    if marker.exists() and json.loads(marker.read_text()) == manifest:
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "json").mkdir(parents=True)
    rng = random.Random(seed)
    pool = [_sentence(rng) for _ in range(20000)]
    n_files = -(-docs // per_file)
    with zipfile.ZipFile(root / "archive.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in range(n_files):
            ids = range(f * per_file, min((f + 1) * per_file, docs))
            # the distributed layout: a list of wrappers, each holding a `data` list (here 100 documents each)
            wrappers = [{"data": [_document(rng, pool, i) for i in ids[w:w + 100]]} for w in range(0, len(ids), 100)]
            text = json.dumps(wrappers, ensure_ascii=False)
            if f < zipped_files:
                zf.writestr(f"zipped/part-{f:05d}.json", text)
            else:
                (root / "json" / f"part-{f:05d}.json").write_text(text, encoding="utf-8")
    marker.write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------------------------------------------------
# run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--per-file", type=int, default=500, help="documents per .json file")
    ap.add_argument("--zipped-files", type=int, default=20, help="how many of the files go into archive.zip")
    ap.add_argument("--granularity", choices=["entire", "section", "both"], default="entire")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/writemypaper-bench"))
    a = ap.parse_args()

    corpus, out = a.workdir / "corpus", a.workdir / f"prepared-{a.granularity}"
    t = time.perf_counter()
    make_corpus(corpus, a.docs, a.per_file, a.zipped_files)
    size = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
    print(f"corpus: {corpus} ({size / 2**20:.0f} MiB, ready in {time.perf_counter() - t:.0f} s)", file=sys.stderr)

    cmd = [sys.executable, "-m", "writemypaper", "prepare", "--input", str(corpus), "--out", str(out),
           "--granularity", a.granularity, "-q"]
    print("$ " + " ".join(cmd), file=sys.stderr)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux

    import datasets
    import pyarrow

    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    n = stats["totals"]["documents_read"]
    print(f"python {platform.python_version()}, pyarrow {pyarrow.__version__}, datasets {datasets.__version__}")
    print("| granularity | documents | input files | corpus MiB | pairs | wall s | documents/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {a.granularity} | {n:,} | {len(stats['inputs'])} | {size / 2**20:.0f} | {stats['totals']['pairs']:,} "
          f"| {wall:.1f} | {n / wall:,.0f} | {peak_mib:.0f} |")


if __name__ == "__main__":
    main()
