"""Plain-text table of a Pruner's report."""

from __future__ import annotations

from collections.abc import Sequence

from sparsernn.prune.pruner import ReportRow


def _threshold_text(threshold: float | tuple[float, ...]) -> str:
    if isinstance(threshold, tuple):
        return " ".join(f"{t:.4g}" for t in threshold)
    return f"{threshold:.4g}"


def format_report(rows: Sequence[ReportRow]) -> str:
    """A fixed-width table: one line per tensor and a total line."""
    header = ("tensor", "group", "shape", "nonzeros", "sparsity", "threshold")
    lines = [(r.name, r.group, "x".join(map(str, r.shape)), f"{r.nonzeros:,}",
              f"{r.sparsity:.2%}", _threshold_text(r.threshold)) for r in rows]
    numel = sum(r.numel for r in rows)
    nonzeros = sum(r.nonzeros for r in rows)
    lines.append(("total", "", f"{numel:,}", f"{nonzeros:,}",
                  f"{1 - nonzeros / max(1, numel):.2%}", ""))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    table = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    table += [fmt.format(*row) for row in lines]
    return "\n".join(line.rstrip() for line in table)
