"""The bench command end to end on its smallest configuration (a smoke test: no speed is asserted)."""

import json

import pytest

from sparsernn import kernels
from sparsernn.bench import device_rows, machine, measure_in_turns
from sparsernn.bench.peers import BF16_PEERS, INT8_PEERS, PEERS, missing
from sparsernn.bench.report import markdown_table
from sparsernn.cli import main

pytestmark = pytest.mark.skipif(kernels.backend() != "c", reason="compiled kernels not built")


def test_quick_bench_writes_rows_table_and_plot(tmp_path, capsys):
    paths = {kind: tmp_path / f"bench.{ext}" for kind, ext in
             (("json", "json"), ("markdown", "md"), ("plot", "png"))}
    assert main(["bench", "--quick", "--end-to-end", "--seconds", "0.005",
                 *(item for kind, path in paths.items() for item in (f"--{kind}", str(path)))]) == 0
    result = json.loads(paths["json"].read_text())
    keys = {"n", "sparsity", "batch", "threads", "structure", "method", "us_per_call", "gbytes_per_s",
            "speedup_vs_dense", "bound_speedup"}
    assert all(set(row) == keys for row in result["rows"])
    methods = {(row["structure"], row["method"]) for row in result["rows"]}
    assert {("dense", "numpy"), ("dense", "torch"), ("unstructured", "sparsernn"), ("blocks", "sparsernn"),
            ("unstructured", "sparsernn_bf16"), ("unstructured", "sparsernn_int8"),
            ("unstructured", "torch_csr"), ("unstructured", "scipy")} <= methods
    best_dense = min(r["us_per_call"] for r in result["rows"] if r["structure"] == "dense")
    for row in result["rows"]:
        assert row["speedup_vs_dense"] == pytest.approx(best_dense / row["us_per_call"], rel=1e-2)
    rows = result["end_to_end"]
    structures = ("unstructured", "unstructured_bf16", "unstructured_int8", "blocks", "blocks_bf16")
    # each file in the family engine, as its program in the user's module, and in the C runtime
    ours = [f"{way}_{structure}" for structure in structures for way in ("sparsernn", "program", "c")]
    dense = ("pytorch", "pytorch_int8", *PEERS, *INT8_PEERS, *BF16_PEERS)
    assert [(row["mode"], row["method"]) for row in rows] == [
        (mode, method) for mode in ("streaming", "sequence") for method in (*dense, *ours)]
    for mode in ("streaming", "sequence"):
        timed = [row for row in rows if row["mode"] == mode and "skipped" not in row]
        best = max(row["tokens_per_s"] for row in timed if row["method"] not in ours)
        pytorch = next(row["tokens_per_s"] for row in timed if row["method"] == "pytorch")
        for row in timed:
            assert row["speedup_vs_best_dense"] == pytest.approx(row["tokens_per_s"] / best)
            assert row["speedup_vs_pytorch"] == pytest.approx(row["tokens_per_s"] / pytorch)
    for row in rows:  # a peer is timed exactly where it is installed, else says why not
        if row["method"] in (*PEERS, *INT8_PEERS, *BF16_PEERS):
            assert ("skipped" in row) == (missing(row["method"]) is not None)
        if "skipped" not in row:  # the bytes of the file each method runs from
            assert row["bytes"] > 0
    sizes = {row["method"]: row["bytes"] for row in rows if row["mode"] == "streaming" and "bytes" in row}
    assert sizes["sparsernn_unstructured_int8"] < sizes["sparsernn_unstructured_bf16"] < \
        sizes["sparsernn_unstructured"] < sizes["pytorch"]
    assert sizes["pytorch_int8"] < sizes["pytorch"]
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    markdown = paths["markdown"].read_text()
    assert "| blocks | sparsernn |" in markdown
    for mode in ("streaming", "sequence"):  # one heading per model and mode, not the model in every row
        assert markdown.count(f"**{rows[0]['model']}**, {mode}, 1 thread(s).") == 1
    assert markdown.count(rows[0]["model"]) == 2
    assert "cuSPARSE against cuBLAS comparison is skipped" in capsys.readouterr().out  # no CUDA here


@pytest.mark.parametrize("sizes", [[1760], [1024, 1760, 2560]])
def test_the_plot_draws_bars_for_one_size_and_lines_for_several_with_the_legend_clear(sizes):
    """One size: a bar per method, named under it (not points at n = 1760 on an axis from 1700 to
    1850); several: a line per method over n; either way the legend lies below every panel."""
    import matplotlib.pyplot as plt

    from sparsernn.bench.report import figure_of

    methods = [("dense", "numpy"), ("dense", "torch"), ("unstructured", "sparsernn"), ("blocks", "sparsernn"),
               ("blocks", "scipy")]
    rows = [{"n": n, "sparsity": 0.0 if structure == "dense" else 0.9, "batch": batch, "threads": 1,
             "structure": structure, "method": method, "speedup_vs_dense": 1.0 + k}
            for n in sizes for batch in (1, 4) for k, (structure, method) in enumerate(methods)]
    figure = figure_of(rows)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)
    for axis in figure.axes:
        if len(sizes) == 1:
            assert len(axis.patches) == len(methods) and not axis.get_lines()[1:]  # bars (and the 1.0 line)
            assert [t.get_text() for t in axis.get_xticklabels()] == ["numpy", "torch", "scipy", "sparsernn",
                                                                     "sparsernn"]
        else:
            assert not axis.patches and len(axis.get_lines()) == len(methods) + 1
        assert legend.y1 <= axis.get_tightbbox(renderer).y0 + 1
    plt.close(figure)


def test_methods_are_timed_in_turns():
    """After one calibration pass each, the functions alternate: one batch of each per round (each
    batch led by its untimed warm-up call)."""
    calls = []
    functions = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timed = measure_in_turns(functions, 0.002, rounds=4)
    assert set(timed) == {"a", "b"} and all(us > 0 for us in timed.values())
    runs = [calls[0]] + [now for before, now in zip(calls, calls[1:], strict=False) if now != before]
    assert runs == ["a", "b"] * 5  # the calibration pass, then 4 rounds


def test_device_comparison_runs_on_any_torch_device():
    """The CUDA comparison's code, run on the CPU (the same calls; no device to wait for)."""
    rows = device_rows("cpu", [64], [0.9], [1, 4], (8, 1), 0.002, progress=lambda line: None)
    assert {(r["structure"], r["method"]) for r in rows} == {
        ("dense", "torch_dense_cpu"), ("unstructured", "torch_csr_cpu"), ("blocks", "torch_csr_cpu")}
    assert len(rows) == 6
    for batch in (1, 4):
        dense = next(r for r in rows if r["batch"] == batch and r["structure"] == "dense")
        for row in (r for r in rows if r["batch"] == batch):
            expected = dense["us_per_call"] / row["us_per_call"]
            assert row["speedup_vs_dense"] == pytest.approx(expected, rel=1e-2)
    unstructured = next(r for r in rows if r["structure"] == "unstructured")
    nnz = round(0.1 * 64 * 64)  # values as float32 + int32 column index, and 65 int32 row pointers
    assert unstructured["bound_speedup"] == pytest.approx(64 * 64 * 4 / (nnz * 8 + 65 * 4), rel=1e-2)
    table = markdown_table({"machine": machine(), "block": [8, 1], "rows": [],
                            "cuda": {"device": "stand-in", "rows": rows}})
    assert "CUDA device: stand-in" in table and "| torch_csr_cpu |" in table


def test_end_to_end_times_an_exported_model_file(tmp_path):
    """`sparsernn bench --model FILE`: the file in the engine against its dense weights in PyTorch (and
    the peers where installed), both modes, with the lengths asked for."""
    from sparsernn.bench.end_to_end import QUICK_SHAPE, _pruned_model, end_to_end_rows
    from sparsernn.export import save_sparse

    model, architecture = _pruned_model(QUICK_SHAPE, (1, 1))
    path = tmp_path / "lm.safetensors"
    save_sparse(model, path, extra={"architecture": architecture,
                                    "vocabulary": [str(i) for i in range(QUICK_SHAPE["vocab"])]})
    rows = end_to_end_rows(str(path), (8, 1), steps=(5, 7), progress=lambda line: None)
    timed = [row for row in rows if "skipped" not in row]
    assert {row["method"] for row in timed} >= {"pytorch", "sparsernn_file"}
    assert {(row["mode"], row["tokens"]) for row in rows} == {("streaming", 5), ("sequence", 7)}
    assert all(row["model"] == "lm.safetensors" and row["tokens_per_s"] > 0 for row in timed)
