"""Bench rows as a markdown table and a PNG plot."""

from __future__ import annotations


def markdown_table(result: dict) -> str:
    machine = result["machine"]
    block = "x".join(str(v) for v in result["block"])
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores, AVX2 {machine['avx2']}, "
             f"AVX-512 {machine.get('avx512', False)}, "
             f"numpy {machine['numpy']}, torch {machine['torch']}. Blocks: {block}.", "",
             *_rows_table(result["rows"], "speed-up vs best dense")]
    if result.get("cuda"):
        lines += ["", f"CUDA device: {result['cuda']['device']} (torch CSR = cuSPARSE, dense = cuBLAS).", "",
                  *_rows_table(result["cuda"]["rows"], "speed-up vs dense on the device")]
    if result.get("end_to_end"):
        lines += ["", *end_to_end_table(result["end_to_end"])]
    return "\n".join(lines) + "\n"


def end_to_end_table(rows: list[dict]) -> list[str]:
    """The end-to-end rows as markdown: a heading per model, mode and thread count, a row per method."""
    lines = ["End to end, batch 1: dense runtimes on the dense model, sparsernn on the 90% sparse one. "
             "\"Best dense\" is the fastest dense method measured in the same table, int8 included."]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["mode"], row["threads"]), []).append(row)
    for (model, mode, threads), group in groups.items():
        dense = [r for r in group if not r["method"].startswith(("sparsernn", "program_", "c_"))]
        timed = [r["method"] for r in dense if "tokens_per_s" in r]
        caption = ("" if len(timed) > 2 else
                   f" Only {' and '.join(timed)} of the dense runtimes ran here (the others: skipped), so "
                   "\"best dense\" is the faster of them.")
        lines += ["", f"**{model}**, {mode}, {threads} thread(s).{caption}", "",
                  "| method | tokens/s | vs dense PyTorch | vs best dense | file bytes |",
                  "|---|---|---|---|---|"]
        for row in group:
            size = f"{row['bytes']:,}" if "bytes" in row else ""
            note = f" ({row['note']})" if "note" in row else ""
            if "skipped" in row:
                lines.append(f"| {row['method']} | skipped: {row['skipped']} | | | {size} |")
            else:
                lines.append(f"| {row['method']}{note} | {row['tokens_per_s']:,.0f} "
                             f"| {row['speedup_vs_pytorch']:.2f}x | {row['speedup_vs_best_dense']:.2f}x "
                             f"| {size} |")
    return lines


def _rows_table(rows: list[dict], speedup: str) -> list[str]:
    lines = ["| n | sparsity | batch | threads | structure | method | us/call | GB/s "
             f"| {speedup} | bytes bound |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['n']} | {row['sparsity']:.2f} | {row['batch']} | {row['threads']} "
                     f"| {row['structure']} | {row['method']} | {row['us_per_call']:.1f} "
                     f"| {row['gbytes_per_s']:.1f} | {row['speedup_vs_dense']:.2f} "
                     f"| {row['bound_speedup']:.2f} |")
    return lines


def plot_rows(rows: list[dict], path: str) -> None:
    """:func:`figure_of` the rows, written as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    figure = figure_of(rows)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def figure_of(rows: list[dict]):
    """Speed-up against the best dense method, a panel per sparsity and batch (fewest threads): a line
    per method over n where there are several sizes; with one size, a bar per method, grouped and
    coloured by structure, each named under its bar. The legend sits below the panels, clear of the
    data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    sparsities = sorted({r["sparsity"] for r in rows if r["sparsity"] > 0})
    sizes = sorted({r["n"] for r in rows})
    lines = len(sizes) > 1
    figure, axes = plt.subplots(len(sparsities), len(batches), squeeze=False, sharex=lines,
                                figsize=(max(6, 5 * len(batches)), (3.4 if lines else 4.2) * len(sparsities)))
    threads = min(r["threads"] for r in rows)
    keys = sorted({(r["structure"], r["method"]) for r in rows}, key=lambda k: (k[0] != "dense", k))
    structures = list(dict.fromkeys(structure for structure, _ in keys))
    methods = list(dict.fromkeys(method for _, method in keys))
    # lines: a colour per method, a line style per structure; bars: a colour per structure
    colors = {key: f"C{(methods.index(key[1]) if lines else structures.index(key[0])) % 10}" for key in keys}
    styles = {structure: ("-", "--", ":", "-.")[k % 4] for k, structure in enumerate(structures)}
    for i, sparsity in enumerate(sparsities):
        for j, batch in enumerate(batches):
            axis = axes[i][j]
            chosen = [r for r in rows if r["batch"] == batch and r["threads"] == threads
                      and r["sparsity"] in (0.0, sparsity)]
            ticks, position = [], 0.0
            for k, key in enumerate(keys):
                points = sorted((r["n"], r["speedup_vs_dense"]) for r in chosen
                                if (r["structure"], r["method"]) == key)
                if not points:
                    continue
                if lines:
                    axis.plot(*zip(*points, strict=True), marker="o", markersize=4, color=colors[key],
                              linestyle=styles[key[0]], label=f"{key[1]} ({key[0]})")
                    continue
                position += 1.6 if k and key[0] != keys[k - 1][0] else 1.0  # a gap between structures
                axis.bar(position, points[0][1], color=colors[key], label=key[0])
                ticks.append((position, key[1]))
            axis.axhline(1.0, color="grey", linewidth=0.5)
            where = "" if lines else f"n = {sizes[0]}, "
            axis.set_title(f"{where}sparsity {sparsity:.2f}, batch {batch}, {threads} thread(s)", fontsize=9)
            if lines:
                axis.set_xlabel("n")
            else:
                axis.set_xticks([p for p, _ in ticks], [name for _, name in ticks], rotation=40, ha="right",
                                fontsize=7)
            axis.set_ylabel("speed-up vs best dense")
    handles = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    columns = 3 if lines else len(handles)
    figure.legend(list(handles.values()), list(handles), loc="lower center", fontsize=7, ncol=columns,
                  frameon=False)
    figure.tight_layout(rect=(0, (0.05 if lines else 0.035) * -(-len(handles) // columns) + 0.02, 1, 1))
    return figure
