"""What int8 values cost a trained model: its test metric with the matrices of its exported file, float32
values against int8 (every CSR product then in int8, each column of x quantized), evaluated as the
study reports evaluate the checkpoint (the same split, batches and decoding), only the model's matrices
replaced by the file's (sparsernn.load_sparse). The checkpoint's own PyTorch metric is the first row.

    python benchmarks/int8_accuracy.py RUN/checkpoints/best.pt [--values fp32,int8] [--json OUT.json]

Language models: test perplexity; speech: greedy CER and WER; translation: greedy BLEU and chrF.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from sparsernn import load_sparse
from sparsernn.export import export_checkpoint
from sparsernn.train.evaluate import load_trained


def metric(model, config, vocabulary, checkpoint) -> dict:
    """The test metric of ``model`` as the study's report computes it for its checkpoint."""
    if config.speech:
        from sparsernn.train.metrics import error_rates
        from sparsernn.train.recognize import decode_all, frames_of, load_split

        data = load_split(config, model, "test")
        greedy, _ = decode_all(frames_of(model, data, config.data.eval_batch_size), vocabulary, beam=0)
        rates = error_rates(data.texts, greedy)
        return {"cer_greedy": rates["cer"], "wer_greedy": rates["wer"]}
    if config.translation:
        from sparsernn.data.translation import Tokenizer, load_translation
        from sparsernn.train.translate import score_set

        tokenizer = Tokenizer(checkpoint["artifacts"]["tokenizer.model"])
        data = load_translation(config.data, tokenizer, splits=("test",))[0]["test"]
        with torch.no_grad():
            scores = score_set(model, data, tokenizer, config.data, beam=0)
        return {"bleu_greedy": scores["bleu"], "chrf_greedy": scores["chrf"]}
    from sparsernn.data.text import batchify, load_corpus
    from sparsernn.train.evaluate import evaluate

    columns = batchify(load_corpus(config.data).split("test"), config.data.eval_batch_size)
    return {"perplexity": math.exp(evaluate(model, columns, config.data.bptt))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--values", default="fp32,int8")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config, vocabulary, checkpoint = load_trained(args.checkpoint)
    started = time.perf_counter()
    rows = [{"values": "checkpoint (PyTorch)", **metric(model, config, vocabulary, checkpoint),
             "seconds": time.perf_counter() - started}]
    with tempfile.TemporaryDirectory() as tmp:
        for values in args.values.split(","):
            path = Path(tmp) / f"{values}.safetensors"
            summary = export_checkpoint(args.checkpoint, path, values)
            sparse = load_sparse(copy.deepcopy(model), path)
            started = time.perf_counter()
            rows.append({"values": values, "file_bytes": summary["bytes"],
                         "dense_fp32_bytes": summary["dense_fp32_bytes"],
                         **metric(sparse.eval(), config, vocabulary, checkpoint),
                         "seconds": time.perf_counter() - started})
    names = [key for key in rows[0] if key not in ("values", "seconds")]
    print(f"{args.checkpoint}: test split, batches as the report's\n")
    print("| values | " + " | ".join(names) + " | file bytes | of dense fp32 |")
    print("|---|" + "---|" * (len(names) + 2))
    for row in rows:
        size = (f"{row['file_bytes']:,} | {row['file_bytes'] / row['dense_fp32_bytes']:.1%}"
                if "file_bytes" in row else " | ")
        print(f"| {row['values']} | " + " | ".join(f"{row[n]:.4g}" for n in names) + f" | {size} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
