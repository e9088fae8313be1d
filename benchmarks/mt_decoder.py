"""The translation presets' shape (GRU 256 encoder-decoder, additive attention, vocabulary 8,000; every
matrix and the embeddings 90% pruned at random magnitudes) translating one sentence per call, greedy,
batch 1, one thread: the engine with the decoder step as one compiled program, the engine with the step
as separate drop-in calls (how it ran before), and the dense model in PyTorch, ONNX Runtime and
OpenVINO, timed in turns. Sources are 20 random sentences of 10 to 16 tokens; with random weights the
decoder seldom ends a sentence early, so most run the full 30 steps (the count is printed).

    python benchmarks/mt_decoder.py
"""

import tempfile
from pathlib import Path

import numpy as np
import torch

from sparsernn.bench import measure_in_turns
from sparsernn.bench.peers import BF16_PEERS, PEERS, PeerTranslator, export_translator, missing
from sparsernn.config import Seq2SeqConfig
from sparsernn.engine import sparsify
from sparsernn.engine.families import _DecodeStep  # what TranslationEngine attaches to its model
from sparsernn.models.seq2seq import Seq2Seq
from sparsernn.prune import OneShotSchedule, Pruner

MAX_OUTPUT = 30


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = Seq2SeqConfig(cell="gru", embedding_size=256, hidden_size=256, attention="bahdanau", dropout=0.0)
    dense = Seq2Seq(8000, config).eval()
    for p in dense.parameters():  # trained-looking magnitudes; the speed does not depend on them
        torch.nn.init.normal_(p, std=0.05)
    pruned = Seq2Seq(8000, config).eval()
    pruned.load_state_dict(dense.state_dict())
    schedules = dict.fromkeys(("recurrent", "linear", "embedding"), OneShotSchedule(at=1, sparsity=0.9))
    Pruner(pruned, schedules).step()
    calls_model = sparsify(pruned)
    program_model = sparsify(pruned)
    program_model.decode_step = _DecodeStep(program_model, 1, "auto")
    rng = np.random.default_rng(0)
    sources = [torch.from_numpy(rng.integers(4, 8000, size=int(n))) for n in rng.integers(10, 17, size=20)]

    def torch_model(model):
        def translate():
            with torch.inference_mode():
                return [model.greedy(s[None], torch.tensor([len(s)]), MAX_OUTPUT)[0] for s in sources]
        return translate

    functions = {"pytorch dense": torch_model(dense), "engine, step as calls": torch_model(calls_model),
                 "engine, step as one program": torch_model(program_model)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = None
        for peer in (*PEERS, *BF16_PEERS):
            if missing(peer):
                print(f"{peer}: skipped ({missing(peer)})")
                continue
            paths = paths or export_translator(dense, Path(tmp))
            translator = PeerTranslator(peer, paths, dense)
            functions[f"{peer} dense"] = lambda t=translator: [t.greedy(s.numpy(), MAX_OUTPUT)
                                                               for s in sources]
        steps = sum(min(len(words) + 1, MAX_OUTPUT) for words in functions["engine, step as one program"]())
        assert functions["engine, step as one program"]() == functions["engine, step as calls"]()
        timed = measure_in_turns(functions, 5.0, rounds=5)
    best = min(us for name, us in timed.items() if name.endswith("dense"))
    print(f"{len(sources)} sentences, {steps} decoder steps in all (engine)")
    for name, us in timed.items():
        print(f"{name}: {us / len(sources) / 1000:.2f} ms a sentence, {best / us:.2f}x the best dense "
              "runtime")


if __name__ == "__main__":
    main()
