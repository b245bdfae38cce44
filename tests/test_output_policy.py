"""One output policy for every verb that writes a folder (prepare, train, export, evaluate, demo): a folder we did not
write survives byte for byte and the verb exits with one line, before any work; our own output is refused without
--overwrite and replaced with it; what a killed process left beside --out is cleaned (or, where a live process may
be writing it, named) before any work; a run counts as finished only once its record says so; and a folder pushed
to the Hub names no path of this machine."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import SECTIONS
from writemypaper import record
from writemypaper.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--config", "cpu-demo", "max_train_samples=4", "training.max_steps=1", "training.save_steps=1",
        "training.eval_strategy=no", "early_stopping_patience=null", "training.report_to=[]",
        "training.max_length=160"]


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def snapshot(folder):
    """Every file and folder under `folder`, with the bytes of each file."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def foreign(path):
    """A folder of the user's own: a thesis, a nested folder, and a file named like ours."""
    (path / "chapters").mkdir(parents=True)
    (path / "thesis.txt").write_text("내 논문", encoding="utf-8")
    (path / "chapters" / "1.md").write_text("서론", encoding="utf-8")
    (path / "stats.json").write_text("{}")
    return path


def one_error(capsys, *words):
    """The verb said exactly one line, an error, holding `words`; no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("writemypaper: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def siblings(path):
    """Hidden entries beside `path` that carry its name: temporaries, set-aside copies."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    """A running process, as a writemypaper that is writing would be."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def corpus(tmp_path, make_doc, n=10, name="corpus.json"):
    path = tmp_path / name
    path.write_text(json.dumps([make_doc(f"D{i}", sections=3) for i in range(n)], ensure_ascii=False),
                    encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# prepare


def test_prepare_policy(tmp_path, make_doc, capsys):
    src = corpus(tmp_path, make_doc)
    mine = foreign(tmp_path / "mine")
    before = snapshot(mine)
    for flags in ([], ["--overwrite"]):
        assert main(["prepare", "--input", str(src), "--out", str(mine), "-q", *flags]) == 2
        one_error(capsys, str(mine))
        assert snapshot(mine) == before

    out = tmp_path / "prepared"
    assert main(["prepare", "--input", str(src), "--out", str(out), "-q", "--seed", "1"]) == 0
    rec = record.read(out)
    assert rec.kind == "prepared" and rec.finished and rec.settings["seed"] == 1
    assert rec.data_fingerprint == record.fingerprint(out)
    first = snapshot(out)
    capsys.readouterr()
    assert main(["prepare", "--input", str(src), "--out", str(out), "-q", "--seed", "2"]) == 2
    one_error(capsys, "--overwrite")
    assert snapshot(out) == first
    assert main(["prepare", "--input", str(src), "--out", str(out), "-q", "--seed", "2", "--overwrite"]) == 0
    assert record.read(out).settings["seed"] == 2 and snapshot(out) != first
    assert siblings(out) == []


def test_prepare_handles_what_a_killed_process_left(tmp_path, make_doc, capsys, live_pid):
    src = corpus(tmp_path, make_doc)
    out = tmp_path / "prepared"
    left = tmp_path / f".prepared.tmp-{dead_pid()}-k3j2h1"
    left.mkdir()
    (left / "train.parquet").write_bytes(b"half")
    assert main(["prepare", "--input", str(src), "--out", str(out), "-q"]) == 0
    assert not left.exists() and siblings(out) == [] and record.read(out).finished
    assert "removed" in capsys.readouterr().err

    # killed between the two renames of a replace: `out` missing, the old copy aside; it is put back, whole
    kept = snapshot(out)
    os.rename(out, tmp_path / f".prepared.old-{dead_pid()}")
    assert main(["prepare", "--input", str(src), "--out", str(out), "-q"]) == 2
    one_error(capsys, "--overwrite")  # back in place, and ours: replaced only with --overwrite
    assert snapshot(out) == kept and siblings(out) == []

    # a live process's temporary is never touched: named in the error before any work (the corpus, which is not
    # JSON, is never read)
    broken = tmp_path / "broken.json"
    broken.write_text("not json", encoding="utf-8")
    busy = tmp_path / f".prepared.tmp-{live_pid}-a1b2c3"
    busy.mkdir()
    assert main(["prepare", "--input", str(broken), "--out", str(out), "-q", "--overwrite"]) == 2
    one_error(capsys, str(busy), "another writemypaper process")
    assert busy.is_dir() and snapshot(out) == kept


# ---------------------------------------------------------------------------------------------------------------------
# train and export, on real tiny runs


@pytest.fixture(scope="module")
def runs(short_prepared, tiny_gemma2_dir, tmp_path_factory):
    """RUNS/a, a real tiny run (one step of a 2-layer Gemma 2), and RUNS/b, another run beside it."""
    root = tmp_path_factory.mktemp("policy") / "runs"
    assert main(["train", "--model", str(tiny_gemma2_dir), "--data", str(short_prepared), "--out", str(root / "a"),
                 *TINY]) == 0
    shutil.copytree(root / "a", root / "b")
    return root


def train_args(short_prepared, tiny_gemma2_dir, out, *flags):
    return ["train", "--model", str(tiny_gemma2_dir), "--data", str(short_prepared), "--out", str(out), *TINY,
            *flags]


def test_a_run_is_finished_by_its_record_written_last(runs, short_prepared, tiny_gemma2_dir):
    run = runs / "a"
    rec = record.read(run)
    assert rec.kind == "run" and rec.finished and rec.steps == 1 and rec.base_model == str(tiny_gemma2_dir)
    assert rec.preset == "cpu-demo" and rec.data_fingerprint == record.data_fingerprint(short_prepared)
    assert rec.train_loss is not None and {"torch", "transformers", "trl", "peft"} <= set(rec.versions)
    files = [p for p in run.iterdir() if p.is_file()]
    assert max(files, key=lambda p: p.stat().st_mtime_ns).name == record.FILE
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_train_policy(runs, short_prepared, tiny_gemma2_dir, tmp_path, capsys):
    mine = foreign(tmp_path / "mine")
    before = snapshot(mine)
    for flags in ([], ["--resume"], ["--overwrite"]):
        assert main(train_args(short_prepared, tiny_gemma2_dir, mine, *flags)) == 2
        one_error(capsys, str(mine))
        assert snapshot(mine) == before

    run = tmp_path / "run"
    shutil.copytree(runs / "a", run)
    kept = snapshot(run)
    assert main(train_args(short_prepared, tiny_gemma2_dir, run)) == 2
    one_error(capsys, "--overwrite", "--resume")
    assert main(train_args(short_prepared, tiny_gemma2_dir, run, "--resume", "--overwrite")) == 2
    one_error(capsys, "--resume", "--overwrite")
    assert snapshot(run) == kept

    # a temporary a killed run left inside its folder goes before the work; the dry run changes nothing else
    left = run / f".adapter.tmp-{dead_pid()}-q9w8e7"
    left.mkdir()
    (left / "adapter_model.safetensors").write_bytes(b"half")
    assert main(train_args(short_prepared, tiny_gemma2_dir, run, "--resume", "--dry-run")) == 0
    assert not left.exists() and snapshot(run) == kept

    (run / "left-by-the-old-run.txt").write_text("x")
    assert main(train_args(short_prepared, tiny_gemma2_dir, run, "--overwrite")) == 0
    assert not (run / "left-by-the-old-run.txt").exists() and record.read(run).finished
    assert siblings(run) == []


def test_train_names_a_live_temporary_before_loading_anything(short_prepared, tmp_path, capsys, live_pid):
    run = tmp_path / "run"
    busy = tmp_path / f".run.old-{live_pid}"
    busy.mkdir()
    # the model does not exist: the policy's line comes first, before anything is loaded
    assert main(["train", "--model", str(tmp_path / "no-such-model"), "--data", str(short_prepared), "--out",
                 str(run), *TINY]) == 2
    one_error(capsys, str(busy))
    assert busy.is_dir() and not run.exists()


def test_a_run_killed_after_its_adapter_is_not_finished(short_prepared, tiny_gemma2_dir, tmp_path, monkeypatch,
                                                        capsys):
    """The adapter is in place but a later file is not (here the loss curve fails to write): the run is not
    finished, and export and generate refuse it."""
    from writemypaper import train

    def disk_full(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(train, "plot_losses", disk_full)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="disk full"):
        main(train_args(short_prepared, tiny_gemma2_dir, run))
    assert (run / "adapter_config.json").is_file() and not record.read(run).finished
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 2
    one_error(capsys, "did not finish", "--resume")
    assert not (tmp_path / "export").exists()
    # nor does anything that decodes with it: its adapter may be one from half-way through training
    assert main(["generate", "요약문입니다.", "--model", str(run), "--max-new-tokens", "4"]) == 2
    one_error(capsys, "did not finish", "--resume")


def test_export_policy(runs, tmp_path, capsys):
    run = runs / "a"
    # the parent of the runs (the folder that once lost every run) and another run: never replaced
    kept = snapshot(runs)
    for out in (runs, runs / "b"):
        for flags in ([], ["--overwrite"]):
            assert main(["export", str(run), "--out", str(out), *flags]) == 2
            one_error(capsys, str(out))
    mine = foreign(tmp_path / "mine")
    before = snapshot(mine)
    assert main(["export", str(run), "--out", str(mine), "--overwrite"]) == 2
    one_error(capsys, str(mine))
    assert snapshot(mine) == before and snapshot(runs) == kept

    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    rec = record.read(out)
    assert rec.kind == "export" and rec.finished and rec.base_model == record.read(run).base_model
    assert rec.extra["exported_from"] == str(run.resolve()) and rec.steps == 1
    first = snapshot(out)
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 2
    one_error(capsys, "--overwrite")
    assert snapshot(out) == first

    left = tmp_path / f".export.tmp-{dead_pid()}-z1x2c3"
    left.mkdir()
    aside = tmp_path / f".export.old-{dead_pid()}"  # the replaced copy a killed process had not yet deleted
    aside.mkdir()
    assert main(["export", str(run), "--out", str(out), "--overwrite"]) == 0
    assert siblings(out) == [] and record.read(out).finished and snapshot(runs) == kept


# ---------------------------------------------------------------------------------------------------------------------
# evaluate (scoring existing outputs: the cheapest real path) and demo


def predictions(tmp_path):
    path = tmp_path / "predictions.jsonl"
    rows = [{"summary": s, "reference": o, "prediction": o} for o, s in SECTIONS]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_evaluate_policy(tmp_path, capsys, live_pid):
    preds = predictions(tmp_path)
    args = ["evaluate", "bootstrap=100", "--predictions", str(preds)]
    mine = foreign(tmp_path / "mine")
    before = snapshot(mine)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n", encoding="utf-8")
    for flags in ([], ["--overwrite"]):
        # refused before any work: the broken predictions are never read
        assert main(["evaluate", "--predictions", str(broken), "--out", str(mine), *flags]) == 2
        one_error(capsys, str(mine))
        assert snapshot(mine) == before

    out = tmp_path / "eval"
    left = tmp_path / f".eval.tmp-{dead_pid()}-m4n5b6"
    left.mkdir()
    assert main([*args, "--out", str(out)]) == 0
    assert not left.exists() and siblings(out) == []
    rec = record.read(out)
    assert rec.kind == "eval" and rec.finished and rec.settings["n_samples"] == len(SECTIONS)
    assert {"scores.json", "predictions.jsonl", "config.yaml", "report.html"} <= {p.name for p in out.iterdir()}
    first = snapshot(out)
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2
    one_error(capsys, "--overwrite")
    busy = tmp_path / f".eval.tmp-{live_pid}-v7c8x9"
    busy.mkdir()
    assert main([*args, "--out", str(out), "--overwrite"]) == 2
    one_error(capsys, str(busy))
    busy.rmdir()
    assert snapshot(out) == first
    assert main(["evaluate", "seed=1", *args[1:], "--out", str(out), "--overwrite"]) == 0
    assert record.read(out).finished and siblings(out) == []


def test_demo_policy(tmp_path, capsys):
    from writemypaper import demo

    mine = foreign(tmp_path / "mine")
    before = snapshot(mine)
    for flags in ([], ["--overwrite"]):
        assert main(["demo", "--out", str(mine), "--engine", "transformers", *flags]) == 2
        one_error(capsys, str(mine))
        assert snapshot(mine) == before

    out = tmp_path / "demo"
    rec = demo.start(out, overwrite=False)  # what `demo` writes before its first step
    assert record.read(out) == rec and not rec.finished
    (out / "run").mkdir()
    (out / "run" / "x").write_text("x")
    demo.start(out, overwrite=False)  # an unfinished demo is carried on, as it is
    assert (out / "run" / "x").is_file() and "carrying on" in capsys.readouterr().out
    rec.finished = True
    record.write(out, rec)
    kept = snapshot(out)
    assert main(["demo", "--out", str(out), "--engine", "transformers"]) == 2
    one_error(capsys, "--overwrite")
    assert snapshot(out) == kept
    demo.start(out, overwrite=True)  # a finished demo starts again only with --overwrite
    assert sorted(p.name for p in out.iterdir()) == [record.FILE] and not record.read(out).finished
    assert siblings(out) == []


# ---------------------------------------------------------------------------------------------------------------------
# a push to the Hub, intercepted at the HTTP layer: what is uploaded names no path of this machine


def test_a_hub_push_carries_no_local_path(runs, short_prepared, tiny_gemma2_dir, tmp_path, monkeypatch, capsys):
    import base64

    import httpx
    from huggingface_hub.utils import _http

    from conftest import REPO

    uploaded: dict[str, bytes] = {}

    def hub(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/repos/create":
            return httpx.Response(200, json={"url": "https://huggingface.co/someone/tiny", "name": "someone/tiny"})
        if path == "/api/validate-yaml":  # the model card's front matter
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:  # every file as a regular (non-LFS) file: its bytes then travel in the commit
            files = json.loads(request.content)["files"]
            return httpx.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            for line in request.content.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    uploaded[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return httpx.Response(200, json={"commitUrl": "https://huggingface.co/someone/tiny/commit/0",
                                             "commitOid": "0" * 40, "success": True})
        return httpx.Response(404, json={"error": "not here"})

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    _http.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub)))
    try:
        out = tmp_path / "export"
        assert main(["export", str(runs / "a"), "--out", str(out), "--push-to-hub", "someone/tiny"]) == 0
    finally:
        _http.set_client_factory(_http.default_client_factory)
    assert "pushed to https://huggingface.co/someone/tiny" in capsys.readouterr().out
    assert set(uploaded) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert {"README.md", "config.json", record.FILE, "model.safetensors", "tokenizer_config.json"} <= set(uploaded)
    local = {str(p) for p in (runs.resolve(), tiny_gemma2_dir.resolve(), short_prepared.resolve(), tmp_path.resolve(),
                              REPO.resolve(), REPO.parent.resolve(), __import__("pathlib").Path.home())}
    for name, content in uploaded.items():
        for path in local:
            assert path.encode() not in content, f"{name} holds {path}"
    pushed = json.loads(uploaded[record.FILE])
    assert pushed["exported_from"] is None and pushed["base_model"] == tiny_gemma2_dir.name
    assert pushed["kind"] == "export" and pushed["finished"] is True
