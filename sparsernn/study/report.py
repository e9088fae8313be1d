"""A study's report: the joint table (``report.md``, ``results.csv``, ``results.json``) and its plots."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from sparsernn.study.claims import claims_table, headline_metric
from sparsernn.study.measure import training_curves

PRUNED = ("narang", "agp", "oneshot")


_metric = headline_metric


#: The baseline's dense runtimes a run may have been timed against, beside PyTorch.
PEER_FIELDS = ("baseline_onnxruntime_seconds", "baseline_openvino_seconds", "baseline_pytorch_int8_seconds",
               "baseline_onnxruntime_int8_seconds")


def _has_peers(results: list[dict]) -> bool:
    return any(field in r for r in results for field in PEER_FIELDS)


def _best_dense(r: dict) -> float | None:
    """The run's engine against the fastest runtime of the dense baseline (None: no peer timed)."""
    if not any(field in r for field in PEER_FIELDS):
        return None
    seconds = [r[field] for field in ("baseline_pytorch_seconds", *PEER_FIELDS) if field in r]
    return min(seconds) / r["engine_seconds"]


def _rows(results: list[dict], baseline: dict) -> list[dict]:
    name, base = _metric(baseline)
    peers = _has_peers(results)
    rows = []
    for r in results:
        value = _metric(r)[1]
        rows.append({
            "run": r["name"], "method": r["method"], "seed": r["seed"],
            "recurrent": f"{r['cell']} {r['layers']}x{r['hidden_size']}"
                         + ("" if r["block"] == [1, 1] else f", blocks {r['block'][0]}x{r['block'][1]}"),
            "nonzero_parameters": r["nonzero_parameters"], "sparsity": r["sparsity"],
            **{key: value for key, value in sorted(r["metrics"].items())},
            f"{name}_vs_baseline": value / base - 1,
            "file_bytes": r["file_bytes"],
            "file_vs_baseline_fp32": r["file_bytes"] / baseline["dense_fp32_bytes"],
            "engine_speedup_vs_baseline_pytorch": r["baseline_pytorch_seconds"] / r["engine_seconds"],
            **({"engine_speedup_vs_best_dense": _best_dense(r)} if peers else {}),
            "train_time_vs_baseline": r["train_seconds"] / baseline["train_seconds"],
        })
    return rows


def _markdown(rows: list[dict], task: str) -> list[str]:
    metric_headers = {"speech": "test CER | test WER | CER beam | WER beam | CER vs dense",
                      "translation": "test BLEU | BLEU beam | chrF | BLEU vs dense",
                      "language_model": "test perplexity | vs dense"}[task]
    peers = any("engine_speedup_vs_best_dense" in row for row in rows)
    header = (f"| run | method | recurrent | non-zero parameters | sparsity | {metric_headers} | model file "
              "(vs dense fp32) | engine speed at batch 1 vs dense PyTorch "
              + ("| vs the best dense runtime " if peers else "") + "| training time vs dense |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        if task == "speech":
            beam = " | ".join(f"{row[k]:.1%}" if k in row else "-" for k in ("cer_beam", "wer_beam"))
            metrics = (f"{row['cer_greedy']:.1%} | {row['wer_greedy']:.1%} | {beam} "
                       f"| {row['CER_vs_baseline']:+.1%}")
        elif task == "translation":
            beam = f"{row['bleu_beam']:.2f}" if "bleu_beam" in row else "-"
            metrics = (f"{row['bleu_greedy']:.2f} | {beam} | {row['chrf_greedy']:.2f} "
                       f"| {row['BLEU_vs_baseline']:+.1%}")
        else:
            metrics = f"{row['perplexity']:.2f} | {row['perplexity_vs_baseline']:+.1%}"
        best = row.get("engine_speedup_vs_best_dense")
        lines.append(f"| {row['run']} | {row['method']} | {row['recurrent']} "
                     f"| {row['nonzero_parameters']:,} | {row['sparsity']:.1%} | {metrics} "
                     f"| {row['file_bytes'] / 1e6:.2f} MB ({row['file_vs_baseline_fp32']:.1%}) "
                     f"| {row['engine_speedup_vs_baseline_pytorch']:.2f}x "
                     + ("" if not peers else "| - " if best is None else f"| {best:.2f}x ")
                     + f"| {row['train_time_vs_baseline']:.2f}x |")
    return lines


def _lm_table(study, results: list[dict]) -> list[str]:
    """Speech with the study's LM: CER and WER by search, and each search's real-time factor."""
    if study.lm is None:
        return []
    widths = study.lm.beams
    done = [r for r in results if all(f"cer_lm{w}" in r["metrics"] for w in widths)]
    if not done:
        return []
    header = ("| run | greedy CER / WER | beam " + str(study.beam) + " | "
              + " | ".join(f"beam {w} + LM" for w in widths) + " | search RTF: beam "
              + ", ".join(f"{w} / {w} + LM" for w in widths) + " |")
    lines = [f"Decoding the test split with a {study.lm.order}-gram word LM (modified Kneser-Ney, built by "
             "`sparsernn lm build` from the training transcripts, validation speakers left out) fused "
             f"into the prefix beam search: alpha {study.lm.alpha:g}, beta {study.lm.beta:g} (chosen "
             "with `sparsernn lm tune` on the validation split). CER / WER; the real-time factor is the "
             "search's seconds per second of audio on one thread, the network excluded.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for r in done:
        m = r["metrics"]
        pair = "{:.1%} / {:.1%}".format
        cells = [pair(m["cer_greedy"], m["wer_greedy"]),
                 pair(m["cer_beam"], m["wer_beam"]) if "cer_beam" in m else "-",
                 *(pair(m[f"cer_lm{w}"], m[f"wer_lm{w}"]) for w in widths),
                 ", ".join(f"{m[f'rtf_beam{w}']:.3f} / {m[f'rtf_lm{w}']:.3f}" for w in widths)]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _setups(study, results: list[dict]) -> list[list[dict]]:
    """The results grouped by setup: runs that differ only in ``train.seed`` share a group, in the order
    of their seeds (the first names the group)."""
    from sparsernn.study import setup

    by_name = {r["name"]: r for r in results}
    groups: dict[tuple, list[dict]] = {}
    for run in study.runs:
        if run.name in by_name:
            groups.setdefault(setup(run), []).append(by_name[run.name])
    return [sorted(group, key=lambda r: r["seed"]) for group in groups.values()]


def _seed_spread(study, results: list[dict], task: str) -> list[str]:
    """Runs that differ only in ``train.seed``: their metric side by side, so readers see the noise."""
    lines = []
    for group in _setups(study, results):
        if len(group) > 1:
            values = [_metric(r)[1] for r in group]
            form = "{:.1%}" if task == "speech" else "{:.2f}"
            shown = ", ".join(f"{r['name']} (seed {r['seed']}) {form.format(v)}"
                              for r, v in zip(group, values, strict=True))
            spread = {"speech": f"{100 * (max(values) - min(values)):.1f} points",
                      "translation": f"{max(values) - min(values):.2f} BLEU points",
                      "language_model": f"{max(values) / min(values) - 1:.1%}"}[task]
            lines.append(f"- {shown}: spread {spread}")
    if not lines:
        return []
    return [f"Seed spread (runs that differ only in `train.seed`), test {_metric(results[0])[0]}:", "",
            *lines, ""]


def _label_apart(axis, points: list[tuple[float, float, str, str]], size: float = 7.0) -> None:
    """Name each point (x, y, text, color) in its color: to the right of it, moved up or down by up to
    three lines, else to its left likewise, else further up or down (at most 15 lines), until the label's
    box, estimated from the font size, covers no point and no label placed before it and stays inside
    the axes; a moved label gets a thin line to its point."""
    figure = axis.figure
    figure.canvas.draw()  # fixes the axis limits, so data map to display points
    to_points = 72.0 / figure.dpi
    left, right = (value * to_points for value in (axis.bbox.x0, axis.bbox.x1))
    at = [tuple(value * to_points for value in axis.transData.transform((x, y))) for x, y, _, _ in points]
    placed = [(px - 3, py - 3, px + 3, py + 3) for px, py in at]  # the markers
    order = sorted(range(-15, 16), key=lambda s: (abs(s), -s))  # 0, 1, -1, 2, -2, ...
    near, far = [s for s in order if abs(s) <= 3], [s for s in order if abs(s) > 3]

    def fits(box) -> bool:
        return left <= box[0] and box[2] <= right and not any(
            box[0] < p[2] and p[0] < box[2] and box[1] < p[3] and p[1] < box[3] for p in placed)

    for (px, py), (x, y, text, color) in sorted(zip(at, points, strict=True), key=lambda item: item[1]):
        width, height = 0.55 * size * len(text), 1.2 * size
        tries = [(step, dx, (px + dx, py + 2 + step * height, px + dx + width, py + 2 + (step + 1) * height))
                 for steps in (near, far) for dx in (4, -4 - width) for step in steps]
        step, dx, box = next((t for t in tries if fits(t[2])), tries[0])  # none free: right, in line
        placed.append(box)
        leader = dict(arrowstyle="-", color=color, linewidth=0.5, shrinkA=0, shrinkB=3) if step or dx < 0 \
            else None
        axis.annotate(text, (x, y), xytext=(dx, 2 + step * height), textcoords="offset points", fontsize=size,
                      color=color, arrowprops=leader)


def _plots(out: Path, study, results: list[dict], metric_name: str,
           higher_is_better: bool) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    made = []

    def save(figure, file: str, caption: str) -> None:
        figure.tight_layout()
        figure.savefig(out / file, dpi=110)
        plt.close(figure)
        made.append((file, caption))

    methods = ("dense", "narang", "agp", "oneshot", "small_dense", "distill")
    colors = {method: f"C{i}" for i, method in enumerate(methods)}

    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))  # 300k, 500k, 1M, 2M...
    axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else
                                                 f"{x / 1e3:g}k"))
    axis.xaxis.set_minor_formatter(NullFormatter())  # matplotlib's own labels of the minor ticks overlap
    setups = _setups(study, results)

    def spread(group: list[dict]) -> tuple[float, float, float]:
        """A setup's metric: the mean over its seeds, the lowest and the highest seed."""
        values = [_metric(r)[1] for r in group]
        return statistics.fmean(values), min(values), max(values)

    by_method: dict[str, list[tuple]] = {}
    for group in setups:  # one point per setup: the mean over its seeds
        label = group[0]["name"] + (f" ({len(group)} seeds)" if len(group) > 1 else "")
        by_method.setdefault(group[0]["method"], []).append(
            (statistics.fmean(r["nonzero_parameters"] for r in group), *spread(group), label))
    for method, points in by_method.items():
        points.sort()
        x, y, low, high, _ = (list(column) for column in zip(*points, strict=True))
        axis.errorbar(x, y, yerr=[[m - lo for m, lo in zip(y, low, strict=True)],
                                  [hi - m for m, hi in zip(y, high, strict=True)]],
                      color=colors[method], marker="o", capsize=3, label=method, linestyle="none")
        best: dict[float, float] = {}  # the method's frontier: its best setup at each size (within 2%)
        for size, value in zip(x, y, strict=True):
            near = next((s for s in best if abs(size / s - 1) < 0.02), size)
            best[near] = value if near not in best else (max if higher_is_better else min)(best[near], value)
        if len(best) > 1:
            axis.plot(list(best), list(best.values()), color=colors[method], linewidth=1)
    _label_apart(axis, [(x, y, label, colors[method]) for method, points in by_method.items()
                        for x, y, _, _, label in points])
    axis.legend(fontsize=7)
    axis.set_xlabel("non-zero parameters")
    axis.set_ylabel(f"test {metric_name}")
    axis.set_title("accuracy against size")
    save(figure, "frontier.png", f"Test {metric_name} against non-zero parameters: one point per setup, the "
         "mean over its seeds, bars from the lowest to the highest seed; each method's line joins its best "
         "setup at each size")

    pruned_setups = [group for group in setups if group[0]["method"] in PRUNED]
    pruned = [group[0] for group in pruned_setups]  # one run per setup (its first seed) in the curves
    if pruned:
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        styles = ("-", "--", ":", "-.")  # one color per run (the left legend), one line style per layer group
        groups: dict[str, str] = {}
        for i, r in enumerate(pruned):
            curve = training_curves(out / "runs" / r["name"])
            steps = [c["step"] for c in curve]
            color = plt.get_cmap("tab20")(i % 20)
            left.plot(steps, [c["sparsity"] for c in curve], label=r["name"], color=color)
            for group in sorted(curve[-1]["threshold"]) if curve else []:
                style = groups.setdefault(group, styles[len(groups) % len(styles)])
                right.plot(steps, [c["threshold"].get(group, 0.0) for c in curve], color=color,
                           linestyle=style)
        for group, style in groups.items():
            right.plot([], [], color="black", linestyle=style, label=group)
        left.set_xlabel("training step")
        left.set_ylabel("sparsity of the pruned tensors")
        right.set_xlabel("training step")
        right.set_ylabel("largest threshold applied")
        left.legend(fontsize=7 if len(pruned) <= 12 else 5)
        right.legend(fontsize=7)
        save(figure, "schedule.png", "Sparsity and threshold (per layer group) against training step, "
             "one run per pruned setup (its first seed)")

        figure, axis = plt.subplots(figsize=(10, 3.8))
        tensors = list(pruned[0]["layer_sparsity"])
        width = 0.8 / len(pruned)
        for i, r in enumerate(pruned):
            values = [r["layer_sparsity"].get(t, 0.0) for t in tensors]
            axis.bar([x + i * width for x in range(len(tensors))], values, width, label=r["name"])
        axis.set_xticks([x + 0.4 - width / 2 for x in range(len(tensors))], tensors, rotation=30,
                        ha="right", fontsize=7)
        axis.set_ylabel("final sparsity")
        axis.legend(fontsize=7)
        save(figure, "layers.png", "Final sparsity of every pruned tensor, one run per pruned setup "
             "(its first seed)")

        figure, axis = plt.subplots(figsize=(6, 3.8))
        ordered = sorted(pruned_setups, key=lambda g: (round(g[0]["sparsity"], 2), g[0]["method"]))
        for i, group in enumerate(ordered):  # one bar per setup: the mean over its seeds
            (mean, low, high), first = spread(group), group[0]
            axis.bar(i, mean, color=colors[first["method"]], label=first["method"],
                     yerr=[[mean - low], [high - mean]] if len(group) > 1 else None, capsize=2)
            axis.annotate(f"{first['sparsity']:.0%}", (i, mean), ha="center", fontsize=7,
                          xytext=(0, 2), textcoords="offset points")
        axis.set_xticks(range(len(ordered)), [g[0]["name"] + (f" ({len(g)})" if len(g) > 1 else "")
                                              for g in ordered], rotation=30, ha="right", fontsize=7)
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        axis.legend(unique.values(), unique.keys(), fontsize=7)
        axis.set_ylabel(f"test {metric_name}")
        axis.set_title("gradual (narang, agp) against hard (oneshot) pruning")
        save(figure, "gradual_vs_hard.png", f"Test {metric_name} of the pruned setups by method and "
             "sparsity: the mean over a setup's seeds (their number in brackets), bars from the lowest to "
             "the highest")
    return made


def write_report(out: Path) -> Path:
    from sparsernn.study import load_study, run_dir
    from sparsernn.study.measure import is_measured

    study = load_study(out / "study.yaml")
    results = [json.loads((run_dir(out, run.name) / "result.json").read_text()) for run in study.runs
               if is_measured(run_dir(out, run.name))]
    baseline = next((r for r in results if r["name"] == study.baseline), None)
    if baseline is None:
        from sparsernn.config import ConfigError

        raise ConfigError(f"{out}: the baseline run {study.baseline!r} has no results yet")
    task = baseline["task"]
    rows = _rows(results, baseline)
    (out / "results.json").write_text(json.dumps({"title": study.title, "baseline": study.baseline,
                                                   "runs": results}, indent=2) + "\n")
    with (out / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    command = (out / "command.txt").read_text().strip()
    host = baseline["machine"]
    elsewhere = [r["name"] for r in results if r["machine"] != host]
    timed = {"speech": f"the first {study.speed_utterances} test utterances",
             "translation": f"the first {study.speed_sentences} test sentences, one per call, greedy",
             "language_model": f"{study.speed_tokens} test tokens fed one per call (streaming)"}[task]
    notes = out / "notes.md"  # how the runs were made, where that is more than the command
    lines = [f"# {study.title}", "", "```sh", command, "```", "",
             *([notes.read_text().strip(), ""] if notes.exists() else []),
             f"Machine: {host['cpu']}, {host['cores']} cores, torch {host['torch']}. Metrics on the test "
             f"split. Speeds at batch 1 on one thread over {timed} (best of 3, timed in turns in one "
             "process): the engine on each run's exported model against the dense baseline in PyTorch"
             + (" and, where installed, in ONNX Runtime and OpenVINO at fp32, and in dense int8 (PyTorch's "
                "and ONNX Runtime's dynamic quantization) for runs timed since it was added (the best dense "
                "runtime: the fastest of those timed; `-`: run timed before the peers were; OpenVINO's bf16 "
                "mode, faster on CPUs with bf16, is timed by `sparsernn bench`: BENCHMARKS.md)"
                if _has_peers(results) else "")
             + ".", "",
             *_markdown(rows, task), ""]
    if elsewhere:
        lines += [f"Measured on another machine or software than the baseline (see results.json): "
                  f"{', '.join(elsewhere)}.", ""]
    if task == "translation":
        lines += [f"BLEU: sacrebleu `{baseline['bleu_signature']}`; chrF: `{baseline['chrf_signature']}`; "
                  "detokenized output against the references as written.", ""]
    lines += _lm_table(study, results)
    lines += claims_table(study.claims, {r["name"]: _metric(r)[1] for r in results}, _metric(baseline)[0],
                          higher_is_better=task == "translation")
    lines += _seed_spread(study, results, task)
    missing = [run.name for run in study.runs if run.name not in {r["name"] for r in results}]
    if missing:
        lines += [f"Not finished, left out: {', '.join(missing)}.", ""]
    for file, caption in _plots(out, study, results, _metric(baseline)[0], task == "translation"):
        lines += [f"![{caption}]({file})", "", f"*{caption}.*", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
