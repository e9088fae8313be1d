"""Where a streamed token's time goes in the GRU LM 2x1024 of `sparsernn bench --end-to-end` (90% pruned
at random, float32 and bf16 values): the compiled program of the recurrent layers alone, the decoder's
product alone, the two one after the other (as a token runs them) and the engine's one program, each
repeated 200 times (best of 7 rounds), one thread, and the bytes of each part's one-column copies (what
a token reads). Run alone, each part keeps its matrices in the caches; one after the other they evict
each other, and the difference is what the cache costs a token.

    python benchmarks/probes/lm_token_parts.py        # about a minute; pause other work first
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from sparsernn import kernels
from sparsernn.bench.end_to_end import SHAPES, _pruned_model
from sparsernn.engine.families import LanguageModelEngine
from sparsernn.export import save_sparse
from sparsernn.kernels import SparseMatrix


def best_us(call, repeats: int = 200, rounds: int = 7) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e6


def copy_megabytes(operations) -> float:
    """Megabytes of the one-column copies (values and indices) the operations' matrices are read from."""
    copies = [m.sliced if kernels.isa() == "avx512" else m.interleaved
              for operation in operations for m in operation if isinstance(m, SparseMatrix)]
    return sum(c.values.nbytes + c.index.nbytes for c in copies if c is not None) / 1e6


def parts(path: str) -> dict[str, float]:
    engine = LanguageModelEngine(path, threads=1)
    state = engine.rnn.initial_state(1)
    x = np.random.default_rng(0).standard_normal((engine.embedding.shape[1], 1)).astype(np.float32)
    operations, hidden = engine.rnn.step_operations(x, state)
    logits = np.empty((engine.decoder.shape[0], 1), np.float32)
    decode = ("product", engine.decoder, hidden, logits, engine.decoder_bias)
    layers = kernels.Program(list(operations), threads=1)
    decoder = kernels.Program([decode], threads=1)
    token = kernels.Program([*operations, decode], threads=1)
    print(f"one-column copies: recurrent layers {copy_megabytes(operations):.1f} MB, decoder "
          f"{copy_megabytes([decode]):.1f} MB")
    return {"recurrent layers alone": best_us(layers), "decoder alone": best_us(decoder),
            "one after the other": best_us(lambda: (layers(), decoder())), "one program": best_us(token)}


def main() -> None:
    shape = SHAPES["gru"]
    model, architecture = _pruned_model(shape, (1, 1))
    with tempfile.TemporaryDirectory() as tmp:
        for values in ("fp32", "bf16"):
            path = str(Path(tmp) / f"{values}.safetensors")
            save_sparse(model, path, values=values, extra={
                "architecture": architecture, "vocabulary": [str(i) for i in range(shape["vocab"])]})
            timed = parts(path)
            print(f"{values} values: " + ", ".join(f"{name} {us:.1f} us" for name, us in timed.items()))


if __name__ == "__main__":
    main()
