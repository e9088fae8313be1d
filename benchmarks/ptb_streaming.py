"""The PTB presets' shape (LSTM 2x200, vocabulary 10,000, 90% pruned at random) streamed one token per
call: the engine with float32 and bf16 values against the dense runtimes, in turns (the rows of
`sparsernn bench --end-to-end` for this model alone, a minute instead of five).

    python benchmarks/ptb_streaming.py
"""

import tempfile
from pathlib import Path

from sparsernn.bench.end_to_end import SHAPES, _pruned_model, time_model
from sparsernn.export import save_sparse


def main() -> None:
    shape = SHAPES["ptb"]
    with tempfile.TemporaryDirectory() as tmp:
        variants = {}
        for structure, values in (("unstructured", "fp32"), ("unstructured_bf16", "bf16")):
            model, architecture = _pruned_model(shape, (1, 1))
            path = str(Path(tmp) / f"{structure}.safetensors")
            save_sparse(model, path, values=values, extra={
                "architecture": architecture, "vocabulary": [str(i) for i in range(shape["vocab"])]})
            variants[structure] = path
        rows = time_model("ptb", model, variants, steps=(200, 2000), progress=lambda line: None)
    for row in rows:
        if row["mode"] == "streaming" and "tokens_per_s" in row:
            print(f"{row['method']}: {row['tokens_per_s']:,.0f} tokens/s, "
                  f"{row['speedup_vs_best_dense']:.2f}x the best dense runtime")


if __name__ == "__main__":
    main()
