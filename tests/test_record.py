"""The run record (writemypaper.json): one writer and one reader, the files of earlier versions read as they were,
and the reuse decision the notebook takes from it (a result built from other data, preset, model or steps is made
again: the sample corpus -> AIHub and CPU -> T4 train anew)."""

import json

import pytest

from conftest import REPO
from writemypaper import record
from writemypaper.data import prepare

NOTEBOOK = REPO / "notebooks" / "writemypaper_colab.ipynb"


def test_write_then_read_round_trips_and_keeps_unknown_keys(tmp_path):
    rec = record.RunRecord(kind="export", finished=True, base_model="gemma3-270m", instruction="지시",
                           data_fingerprint="ab", settings={"overrides": ["lora.r=4"]}, steps=3, train_loss=1.5,
                           versions=record.versions(), extra={"exported_from": "/x", "from_a_newer_version": 1})
    record.write(tmp_path, rec)
    assert record.read(tmp_path) == rec
    data = json.loads((tmp_path / record.FILE).read_text(encoding="utf-8"))
    # the keys other readers look up stay at the top, where they always were
    assert data["base_model"] == "gemma3-270m" and data["instruction"] == "지시" and data["exported_from"] == "/x"
    assert data["versions"]["writemypaper"] and "torch" in data["versions"]
    assert [p.name for p in tmp_path.iterdir()] == [record.FILE]  # no temporary left beside it


def test_files_of_earlier_versions_are_read(tmp_path):
    run, export = tmp_path / "run", tmp_path / "export"
    run.mkdir()
    export.mkdir()
    (run / record.FILE).write_text(json.dumps({"base_model": "gemma3-270m", "instruction": None}))
    (export / record.FILE).write_text(json.dumps({"base_model": "b", "instruction": "i", "exported_from": "/r",
                                                  "safetensors": True, "gguf": None, "merged_base": None}))
    r, e = record.read(run), record.read(export)
    assert (r.kind, r.finished, r.base_model) == ("run", True, "gemma3-270m")
    assert (e.kind, e.instruction, e.extra["exported_from"], e.extra["safetensors"]) == ("export", "i", "/r", True)


def test_a_file_that_is_not_a_record_is_refused(tmp_path):
    (tmp_path / record.FILE).write_text("[1, 2]")
    with pytest.raises(record.RecordError, match="not a writemypaper record"):
        record.read(tmp_path)
    (tmp_path / record.FILE).write_text('{"kind": "something else"}')
    with pytest.raises(record.RecordError):
        record.read(tmp_path)
    with pytest.raises(ValueError):
        record.write(tmp_path, record.RunRecord(kind="nope"))


def test_plan(tmp_path):
    assert record.plan(tmp_path / "none", "run", {}) == "new"
    want = {"preset": "cpu-demo", "settings.max_steps": 5}
    rec = record.RunRecord(kind="run", preset="cpu-demo", settings={"max_steps": 5})
    record.write(tmp_path / "r", rec)
    assert record.plan(tmp_path / "r", "run", want) == "resume"
    rec.finished = True
    record.write(tmp_path / "r", rec)
    assert record.plan(tmp_path / "r", "run", want) == "reuse"
    assert record.plan(tmp_path / "r", "run", {**want, "settings.max_steps": 6}) == "replace"
    assert record.plan(tmp_path / "r", "export", {}) == "foreign"  # ours, but not what is asked for
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("내 논문")
    assert record.plan(tmp_path / "mine", "run", want) == "foreign"


# ---------------------------------------------------------------------------------------------------------------------
# the notebook's decision, on folders made by the real prepare and the real start of a run


def _notebook_reuse_cell() -> dict:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    (cell,) = [c for c in cells if "reuse" in c.get("metadata", {}).get("tags", [])]
    from writemypaper import config

    ns: dict = {"config": config}
    exec("".join(cell["source"]), ns)
    return ns


def _corpus(tmp_path, make_doc, name, n):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([make_doc(f"{name}{i}", sections=3) for i in range(n)], ensure_ascii=False),
                    encoding="utf-8")
    return path


def test_notebook_trains_anew_when_data_preset_model_or_device_change(tmp_path, make_doc, capsys):
    from writemypaper import config
    from writemypaper.train import _start_run

    nb = _notebook_reuse_cell()
    sample, aihub = _corpus(tmp_path, make_doc, "sample", 10), _corpus(tmp_path, make_doc, "aihub", 12)
    prepared = tmp_path / "out" / "prepared"
    assert nb["reuse_or_run"](prepared, "prepared", nb["prepared_want"]([sample], "section")) == []
    prepare([str(sample)], prepared, granularity="section", progress=False)
    assert nb["reuse_or_run"](prepared, "prepared", nb["prepared_want"]([sample], "section")) is None
    assert nb["reuse_or_run"](prepared, "prepared", nb["prepared_want"]([aihub], "section")) == ["--overwrite"]
    assert nb["reuse_or_run"](prepared, "prepared", nb["prepared_want"]([sample], "entire")) == ["--overwrite"]

    # the record `train` writes as it starts (unfinished), on the CPU with cpu-demo
    overrides = ["training.max_steps=3"]
    cfg = config.load_config("cpu-demo", overrides, kind="train")
    run = tmp_path / "out" / "run"
    _start_run(cfg, str(prepared), run, start_again=False)
    cpu = nb["run_want"](prepared, "cpu-demo", cfg.model, overrides, None)
    assert nb["reuse_or_run"](run, "run", cpu) == ["--resume"]  # cut off: carried on
    rec = record.read(run)
    rec.finished = True
    record.write(run, rec)
    assert nb["reuse_or_run"](run, "run", cpu) is None  # finished with the same settings: reused

    t4 = ("Tesla T4", (7, 5), 14.7)
    changed = {
        "steps": nb["run_want"](prepared, "cpu-demo", cfg.model, ["training.max_steps=4"], None),
        "model": nb["run_want"](prepared, "cpu-demo", "google/gemma-2-2b-it", overrides, None),
        "CPU -> T4": nb["run_want"](prepared, "gpu-16gb", "google/gemma-2-2b-it", overrides, t4),
        "same preset, now on a GPU": nb["run_want"](prepared, "cpu-demo", cfg.model, overrides, t4),
    }
    for what, want in changed.items():
        assert nb["reuse_or_run"](run, "run", want) == ["--overwrite"], what
    # sample -> AIHub: prepared again, so the data's fingerprint changes and the run is trained anew
    prepare([str(aihub)], prepared, granularity="section", progress=False, overwrite=True)
    assert nb["reuse_or_run"](run, "run", nb["run_want"](prepared, "cpu-demo", cfg.model, overrides, None)) \
        == ["--overwrite"]
    capsys.readouterr()

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("내 논문")
    with pytest.raises(RuntimeError, match="not written by writemypaper"):
        nb["reuse_or_run"](tmp_path / "mine", "run", cpu)
