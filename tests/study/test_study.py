"""`sparsernn study` and `sparsernn report` on tiny generated data."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sparsernn.cli import main
from sparsernn.config import ConfigError
from sparsernn.study import load_study, run_config


def write_study(tmp_path, runs, **fields):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"title": "tiny", "baseline": "dense", "speed_tokens": 50, **fields,
                                    "runs": runs}))
    return path


def write_config(tmp_path, name, raw):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_language_model_study_trains_measures_and_reports(tmp_path, tiny_config, capsys):
    dense = write_config(tmp_path, "dense", {**tiny_config, "prune": {"method": "dense"}})
    sparse = write_config(tmp_path, "sparse", tiny_config)
    study = write_study(tmp_path, [
        {"name": "dense", "config": dense},
        {"name": "narang", "config": sparse},
        {"name": "oneshot", "config": sparse, "set": ["prune.method=oneshot", "prune.at=30"]},
        {"name": "small", "config": dense, "set": ["prune.method=small_dense",
                                                   "prune.match_checkpoint={run:narang}"]},
    ])
    out = tmp_path / "out"
    assert main(["study", str(study), "--out", str(out)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())["runs"]
    assert [r["name"] for r in results] == ["dense", "narang", "oneshot", "small"]
    by_name = {r["name"]: r for r in results}
    assert by_name["narang"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert by_name["small"]["hidden_size"] < 16 and by_name["small"]["method"] == "small_dense"
    assert by_name["narang"]["file_bytes"] < by_name["dense"]["file_bytes"]
    assert set(by_name["narang"]["layer_sparsity"]) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0",
                                                        "rnn.weight_ih_l1", "rnn.weight_hh_l1",
                                                        "decoder.weight"}
    assert all(r["engine_seconds"] > 0 and r["pytorch_seconds"] > 0 and r["baseline_pytorch_seconds"] > 0
               and r["tokens"] == 50 for r in results)
    assert_peers_timed_where_installed(results, (out / "report.md").read_text())
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["run"] for row in rows] == ["dense", "narang", "oneshot", "small"]
    assert float(rows[0]["perplexity_vs_baseline"]) == 0.0
    ratio = by_name["narang"]["metrics"]["perplexity"] / by_name["dense"]["metrics"]["perplexity"] - 1
    assert float(rows[1]["perplexity_vs_baseline"]) == pytest.approx(ratio)
    report = (out / "report.md").read_text()
    assert report.startswith("# tiny\n\n```sh\nsparsernn study ")
    assert report.count("\n| ") == 1 + 4  # header and four runs
    for plot in ("frontier.png", "schedule.png", "layers.png", "gradual_vs_hard.png"):
        assert (out / plot).stat().st_size > 1000 and f"]({plot})" in report

    # Run again: nothing is retrained; `report` rebuilds from the run directories.
    (out / "report.md").unlink()
    assert main(["study", str(study), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
    (out / "report.md").unlink()
    (out / "runs/oneshot/result.json").unlink()
    older = json.loads((out / "runs/small/result.json").read_text())
    del older["machine"]  # as an older sparsernn wrote it: measured again
    (out / "runs/small/result.json").write_text(json.dumps(older))
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text().count("\n| ") == 5
    assert "machine" in json.loads((out / "runs/small/result.json").read_text())


def test_runs_side_by_side_wait_for_the_runs_they_name(tmp_path, tiny_config, capsys):
    tiny_config["train"]["epochs"] = 1
    dense = write_config(tmp_path, "dense", {**tiny_config, "prune": {"method": "dense"}})
    sparse = write_config(tmp_path, "sparse", {**tiny_config, "prune": {**tiny_config["prune"], "end": 20}})
    study = write_study(tmp_path, [
        {"name": "dense", "config": dense},
        {"name": "narang", "config": sparse},
        {"name": "small", "config": dense, "set": ["prune.method=small_dense",
                                                   "prune.match_checkpoint={run:narang}"]},
    ])
    out = tmp_path / "out"
    assert main(["study", str(study), "--out", str(out), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("narang: finished") < printed.index("small: training")  # waited for narang
    assert "--jobs=2" in (out / "report.md").read_text()
    for name in ("dense", "narang", "small"):
        assert {"finished.json", "train.log"} <= {f.name for f in (out / "runs" / name).iterdir()}
    sizing = json.loads((out / "runs/small/sizing.json").read_text())
    narang = json.loads((out / "runs/narang/result.json").read_text())
    assert sizing["target_nonzeros"] == narang["nonzero_parameters"]


def test_a_terminated_study_stops_its_runs(tmp_path, tiny_config):
    """SIGTERM (a scheduler's, ``kill``'s) stops the side-by-side runs with the study, so that none goes
    on writing into a directory the next study resumes."""
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc to list processes")
    tiny_config["train"]["epochs"] = 10_000  # trains until stopped
    dense = write_config(tmp_path, "dense", {**tiny_config, "prune": {"method": "dense"}})
    study = write_study(tmp_path, [{"name": "dense", "config": dense},
                                        {"name": "seed1", "config": dense, "set": ["train.seed=1"]}])
    out = tmp_path / "out"

    def trainings() -> list[int]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                words = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"train" in words and any(str(out).encode() in word for word in words):
                found.append(int(cmdline.parent.name))
        return found

    process = subprocess.Popen([sys.executable, "-m", "sparsernn", "study", str(study), "--out", str(out),
                                "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and not all(
                (out / "runs" / name / "metrics.jsonl").exists() for name in ("dense", "seed1")):
            time.sleep(0.2)
        assert len(trainings()) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        assert trainings() == []
    finally:  # whatever failed, leave nothing running
        process.kill()
        for pid in trainings():
            os.kill(pid, signal.SIGKILL)


def test_an_interrupted_study_resumes_its_run(tmp_path, tiny_config, monkeypatch):
    from sparsernn.prune import Pruner

    dense = write_config(tmp_path, "dense", {**tiny_config, "prune": {"method": "dense"}})
    study = write_study(tmp_path, [{"name": "dense", "config": dense}])
    original = Pruner.step

    def crash(self):
        original(self)
        if self.current_step == 30:
            raise KeyboardInterrupt

    monkeypatch.setattr(Pruner, "step", crash)
    with pytest.raises(KeyboardInterrupt):
        main(["study", str(study), "--out", str(tmp_path / "out")])
    monkeypatch.setattr(Pruner, "step", original)
    assert not (tmp_path / "out/runs/dense/finished.json").exists()
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/runs/dense/finished.json").exists()


def test_speech_study_measures_error_rates_and_audio_speed(tmp_path, speech_config):
    speech_config["train"]["epochs"] = 1
    speech_config["prune"] = {"method": "oneshot", "at": 2, "sparsity": 0.8}
    sparse = write_config(tmp_path, "sparse", speech_config)
    runs = [{"name": "dense", "config": sparse, "set": ["prune.method=dense"]},
            {"name": "sparse", "config": sparse}]
    study = write_study(tmp_path, runs, speed_utterances=2, beam=2,
                        lm={"order": 2, "alpha": 0.5, "beta": 1.0, "beams": [2, 3]})
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out/results.json").read_text())["runs"]
    with_lm = {f"{key}{width}" for key in ("cer_lm", "wer_lm", "rtf_lm", "rtf_beam") for width in (2, 3)}
    assert set(results[1]["metrics"]) == {"cer_greedy", "wer_greedy", "cer_beam", "wer_beam", "rtf_greedy",
                                          "rtf_beam"} | with_lm
    assert results[1]["audio_seconds"] > 0 and results[1]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert (tmp_path / "out/lm.2gram.arpa").read_text().startswith("\\data\\")
    report = (tmp_path / "out/report.md").read_text()
    assert "| test CER | test WER | CER beam | WER beam | CER vs dense |" in report
    assert "| run | greedy CER / WER | beam 2 | beam 2 + LM | beam 3 + LM | search RTF: beam 2 / 2 + LM, " \
           "3 / 3 + LM |" in report
    assert_peers_timed_where_installed(results, report)


def test_translation_study_measures_bleu_and_sentence_speed(tmp_path):
    from tests.conftest import translation_config_for, write_parallel

    raw = translation_config_for(write_parallel(tmp_path / "raw", lines=(300, 20, 20)))
    raw["train"]["epochs"] = 2
    raw["prune"] = {"method": "oneshot", "at": 5, "sparsity": 0.8}
    sparse = write_config(tmp_path, "sparse", raw)
    runs = [{"name": "dense", "config": sparse, "set": ["prune.method=dense"]},
            {"name": "sparse", "config": sparse}]
    study = write_study(tmp_path, runs, speed_sentences=3, beam=2)
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out/results.json").read_text())["runs"]
    assert set(results[1]["metrics"]) == {"bleu_greedy", "chrf_greedy", "perplexity", "bleu_beam",
                                          "chrf_beam"}
    assert results[1]["sentences"] == 3 and results[1]["bleu_signature"].startswith("nrefs:1")
    report = (tmp_path / "out/report.md").read_text()
    assert "| test BLEU | BLEU beam | chrF | BLEU vs dense |" in report
    assert "BLEU: sacrebleu `nrefs:1" in report
    assert_peers_timed_where_installed(results, report)


def assert_peers_timed_where_installed(results: list[dict], report: str) -> None:
    """Each run times the baseline in PyTorch at fp32 and in dense int8 and on every installed peer
    runtime, and the report then has the column."""
    from sparsernn.bench.peers import INT8_PEERS, PEERS, missing

    installed = [peer for peer in (*PEERS, *INT8_PEERS) if missing(peer) is None]
    for r in results:
        assert {key for key in r if key.endswith("_seconds") and key.startswith("baseline_")} == {
            "baseline_pytorch_seconds", "baseline_pytorch_int8_seconds",
            *(f"baseline_{peer}_seconds" for peer in installed)}
    assert "| vs the best dense runtime |" in report


def test_report_compares_the_engine_with_the_best_dense_runtime(tmp_path):
    """The fastest of the baseline's runtimes over the engine; a run timed before the peers shows -."""
    study = write_study(tmp_path, [{"name": "dense", "config": "d.yaml"},
                                   {"name": "sparse", "config": "d.yaml"},
                                   {"name": "older", "config": "d.yaml"}])
    out = tmp_path / "out"
    peers = {"dense": {"baseline_onnxruntime_seconds": 0.4, "baseline_openvino_seconds": 0.8},
             "sparse": {"baseline_onnxruntime_seconds": 0.6, "baseline_openvino_seconds": 0.3},
             "older": {}}
    for name, fields in peers.items():
        directory = out / "runs" / name
        directory.mkdir(parents=True)
        (directory / "finished.json").write_text("{}")
        (directory / "result.json").write_text(json.dumps({
            "name": name, "task": "language_model", "method": "dense", "seed": 0, "cell": "lstm",
            "layers": 1, "hidden_size": 16, "block": [1, 1], "nonzero_parameters": 1600, "sparsity": 0.0,
            "metrics": {"perplexity": 100.0}, "file_bytes": 1000, "dense_fp32_bytes": 1000,
            "pytorch_seconds": 1.0, "baseline_pytorch_seconds": 1.0, "engine_seconds": 0.2, **fields,
            "train_seconds": 10.0, "layer_sparsity": {}, "machine": {"cpu": "x", "cores": 2, "torch": "2"}}))
    (out / "study.yaml").write_text(study.read_text())
    (out / "command.txt").write_text("sparsernn study s.yaml --out out\n")
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| engine speed at batch 1 vs dense PyTorch | vs the best dense runtime |" in report
    assert "| 5.00x | 2.00x | 1.00x |" in report  # dense: ONNX Runtime's 0.4 s against 0.2 s
    assert "| 5.00x | 1.50x | 1.00x |" in report  # sparse: OpenVINO's 0.3 s
    assert "| 5.00x | - | 1.00x |" in report  # older
    rows = {row["run"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert float(rows["sparse"]["engine_speedup_vs_best_dense"]) == pytest.approx(1.5)


def test_a_seed_of_the_baseline_or_its_dropout_twin_is_timed_where_its_checkpoint_is_gone(tmp_path):
    from sparsernn.study.measure import _baseline_source

    study = load_study(write_study(tmp_path, [
        {"name": "dense", "config": "d.yaml"},
        {"name": "sparse", "config": "s.yaml", "set": ["train.seed=1"]},
        {"name": "dense-seed1", "config": "d.yaml", "set": ["train.seed=1"]},
        {"name": "dense-drop", "config": "d.yaml", "set": ["model.dropout=0.3", "train.seed=2"]},
        {"name": "wide", "config": "d.yaml", "set": ["model.hidden_size=256"]}]))
    out = tmp_path / "out"

    def checkpoints(*names):
        for name in ("dense", "sparse", "dense-seed1", "dense-drop", "wide"):
            path = out / "runs" / name / "checkpoints" / "best.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            if name in names:
                path.write_bytes(b"")

    checkpoints("dense", "dense-seed1")
    assert _baseline_source(study, out) == "dense"
    checkpoints("sparse", "dense-seed1")
    assert _baseline_source(study, out) == "dense-seed1"
    checkpoints("sparse", "wide", "dense-drop")  # dropout leaves the shapes alone
    assert _baseline_source(study, out) == "dense-drop"
    checkpoints("sparse", "wide")  # none of the baseline's shape left: the baseline, which then fails
    assert _baseline_source(study, out) == "dense"


def test_report_shows_seed_spread_and_notes(tmp_path):
    study = write_study(tmp_path, [
        {"name": "dense", "config": "d.yaml"},
        {"name": "small", "config": "d.yaml", "set": ["model.hidden_size=8"]},
        {"name": "dense-seed1", "config": "d.yaml", "set": ["train.seed=1"]},
    ])
    out = tmp_path / "out"
    for name, seed, perplexity, hidden in [("dense", 0, 100.0, 16), ("small", 0, 150.0, 8),
                                           ("dense-seed1", 1, 104.0, 16)]:
        directory = out / "runs" / name
        directory.mkdir(parents=True)
        (directory / "finished.json").write_text("{}")
        (directory / "result.json").write_text(json.dumps({
            "name": name, "task": "language_model", "method": "dense", "seed": seed, "cell": "lstm",
            "layers": 1, "hidden_size": hidden, "block": [1, 1], "nonzero_parameters": hidden * 100,
            "sparsity": 0.0, "metrics": {"perplexity": perplexity}, "file_bytes": 1000,
            "dense_fp32_bytes": 1000, "pytorch_seconds": 1.0, "baseline_pytorch_seconds": 1.0,
            "engine_seconds": 0.5,
            "train_seconds": 10.0, "layer_sparsity": {},
            "machine": {"cpu": "x", "cores": 2, "torch": "2" if name != "small" else "3"}}))
    (out / "study.yaml").write_text(study.read_text())
    (out / "command.txt").write_text("sparsernn study s.yaml --out out\n")
    (out / "notes.md").write_text("The dense run was copied in.\n")
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# tiny\n\n```sh\nsparsernn study s.yaml --out out\n```\n\n"
                             "The dense run was copied in.\n\nMachine: ")
    assert ("- dense (seed 0) 100.00, dense-seed1 (seed 1) 104.00: spread 4.0%\n") in report
    assert report.count(": spread ") == 1  # the small model repeats nothing
    assert "Measured on another machine or software than the baseline (see results.json): small." in report
    assert report.count("| 2.00x | 1.00x |") == 3  # engine against the baseline's PyTorch; training time


def test_bad_study_configs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="baseline 'dense' is not one of the runs"):
        load_study(write_study(tmp_path, [{"name": "a", "config": "x.yaml"}]))
    with pytest.raises(ConfigError, match=r"\{run:b\} must name an earlier run"):
        load_study(write_study(tmp_path, [{"name": "dense", "config": "x.yaml", "set": ["a.b={run:b}"]},
                                          {"name": "b", "config": "x.yaml"}]))
    with pytest.raises(ConfigError, match="runs.0.sets: unknown key"):
        load_study(write_study(tmp_path, [{"name": "dense", "config": "x.yaml", "sets": []}]))
    assert main(["report", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("name", ["an4", "mt", "ptb"])
def test_committed_studies_resolve_every_run(name, tmp_path, monkeypatch):
    root = Path(__file__).parent.parent.parent
    study = load_study(root / "configs/studies" / f"{name}.yaml")
    monkeypatch.chdir(root)  # configs name data and each other relative to the repository
    configs = {run.name: run_config(study, run, tmp_path) for run in study.runs}
    assert study.baseline == "dense" and configs["dense"].prune.method == "dense"
    assert configs["distill"].prune.teacher == tmp_path / "runs/dense/checkpoints/best.pt"
    assert configs["narang90-blocks"].prune.block == (8, 1)
    assert {c.prune.method for c in configs.values()} == {"dense", "narang", "oneshot", "agp", "small_dense",
                                                         "distill"}


def test_the_study_overrides_every_run_before_its_own(tmp_path, tiny_config):
    config = write_config(tmp_path, "sparse", tiny_config)
    study = load_study(write_study(tmp_path, [{"name": "dense", "config": config},
                                              {"name": "b", "config": config, "set": ["train.epochs=3"]}],
                                   set=["train.epochs=5", "train.seed=7"]))
    dense, b = (run_config(study, run, tmp_path) for run in study.runs)
    assert (dense.train.epochs, dense.train.seed, b.train.epochs, b.train.seed) == (5, 7, 3, 7)


@pytest.mark.parametrize("name, schedule", [("ptb", (8, 6)), ("an4", (16, 11))])
def test_the_frontier_studies_train_every_run_on_one_schedule_and_seed_their_claims_three_times_or_more(
        name, schedule, tmp_path, monkeypatch):
    root = Path(__file__).parents[2]
    study = load_study(root / f"configs/studies/{name}-frontier.yaml")
    monkeypatch.chdir(root)
    configs = {run.name: run_config(study, run, tmp_path) for run in study.runs}
    assert {(c.train.epochs, c.train.anneal_from) for c in configs.values()} == {schedule}
    for claim in study.claims:
        for names in (claim.runs, claim.against):
            seeds = sorted(configs[name].train.seed for name in names)
            assert len(seeds) >= 3 and seeds == list(range(len(seeds)))
            assert len({str(configs[name].model_dump(exclude={"train": {"seed"}})) for name in names}) == 1


RESULTS = Path(__file__).parents[2] / "docs/results"


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.iterdir()))
def test_committed_reports_rebuild_from_their_run_files(name, tmp_path):
    """`sparsernn report` on a committed study (results, metrics and configs, no checkpoints) writes
    the committed report again."""
    import shutil

    committed = RESULTS / name
    shutil.copytree(committed, tmp_path / name, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    (tmp_path / name / "report.md").unlink()
    assert main(["report", str(tmp_path / name)]) == 0
    assert (tmp_path / name / "report.md").read_text() == (committed / "report.md").read_text()


def test_frontier_labels_stay_apart_off_the_points_and_inside_the_axes():
    """Twelve setups at one size (as a frontier's 90% column has): matplotlib's own text boxes, not the
    estimates the placement uses, overlap neither each other nor a marker, and stay inside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsernn.study.report import _label_apart

    figure, axis = plt.subplots(figsize=(7, 4.5))
    points = [(195e3, 0.15 + 0.01 * i, f"run-{i}-" + "x" * (i % 4 * 4), "C0") for i in range(12)]
    points += [(2e6, 0.2, "a label near the right edge", "C1"), (132e3, 0.16, "left", "C2")]
    axis.set_xscale("log")
    axis.plot([p[0] for p in points], [p[1] for p in points], "o", markersize=4)
    _label_apart(axis, points)
    figure.canvas.draw()
    renderer, frame = figure.canvas.get_renderer(), axis.get_window_extent()
    boxes = [text.get_window_extent(renderer) for text in axis.texts]
    markers = [axis.transData.transform((x, y)) for x, y, _, _ in points]
    assert len(boxes) == len(points)
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 + 1
        assert not any(box.overlaps(other) for other in boxes[i + 1:])
        assert not any(box.contains(mx, my) for mx, my in markers)
    plt.close(figure)
