"""Your own LSTM language model and training loop, pruned to 90% by sparsernn, then shipped.

    python examples/lstm_language_model.py --data ../shared/data/ptb

1. An ordinary word-level LSTM language model and training loop (Adam, gradient clipping,
   ``batch_first``), with two added lines: the Pruner, and ``pruner.step()`` after each optimizer step.
2. ``sparsernn.sparsify(model)``: a copy that runs on the sparse kernels, same calls, same outputs; and
   ``sparsernn.sparsify(model, example_inputs=...)``: the whole forward as one program, a streamed token
   in one compiled call (the program carries the LSTM state from call to call itself).
3. ``sparsernn.save_sparse(model, path, example_inputs=...)``: one compact file, with the program, which
   the C runtime runs too (``examples/c/generate.c`` writes text with it, no Python).
4. ``sparsernn.load_sparse(Model(...), path)``: that file into a fresh instance of the class.
5. Speed against the PyTorch model, in turns, one thread: streaming one token per call at batch 1
   (state carried, as a deployed model generates) and whole sequences at batch 16 x 35.

``--data`` is a folder with ``*train*.txt``, ``*valid*.txt`` and ``*test*.txt`` (one sentence per line,
words separated by spaces, as PTB).
"""

import argparse
import collections
import math
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

import sparsernn
from sparsernn.bench import measure_in_turns


class WordLM(nn.Module):
    def __init__(self, vocab_size, embedding_size=256, hidden_size=256, layers=2, dropout=0.2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embedding_size, hidden_size, num_layers=layers, batch_first=True,
                            dropout=dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens, state=None):  # tokens (B, T)
        hidden, state = self.lstm(self.dropout(self.embedding(tokens)), state)  # (B, T, H)
        return self.decoder(self.dropout(hidden)), state  # (B, T, V)


def read_corpus(folder, vocab_size, max_words=None):
    """Token ids of each split; the vocabulary is the training split's most frequent words and <unk>."""
    words = {}
    for split in ("train", "valid", "test"):
        path = next(Path(folder).glob(f"*{split}*.txt"), None)
        if path is None:
            raise SystemExit(f"{folder}: no *{split}*.txt file")
        lines = path.read_text().splitlines()
        words[split] = [w for line in lines for w in line.split() + ["<eos>"]][:max_words]
    frequent = [w for w, _ in collections.Counter(words["train"]).most_common() if w != "<unk>"]
    vocabulary = ["<unk>"] + frequent[:vocab_size - 1]
    index = {word: i for i, word in enumerate(vocabulary)}
    return {split: torch.tensor([index.get(w, 0) for w in ws]) for split, ws in words.items()}, vocabulary


def batches(data, batch_size, length):
    """(inputs, targets), each (batch_size, length), walking batch_size parallel streams of the text."""
    streams = data[:len(data) // batch_size * batch_size].view(batch_size, -1)
    for start in range(0, streams.shape[1] - 1, length):
        chunk = streams[:, start:start + length + 1]
        yield chunk[:, :-1], chunk[:, 1:]


def call(model, inputs, state):
    """PyTorch's model takes its state back; a program carries it from call to call itself."""
    if isinstance(model, sparsernn.engine.SparseProgram):
        return model(inputs)[0], None
    return model(inputs, state)


@torch.no_grad()
def perplexity(model, data, batch_size=16, length=35):
    total, count, state = 0.0, 0, None
    if isinstance(model, sparsernn.engine.SparseProgram):
        model.reset()
    for inputs, targets in batches(data, batch_size, length):
        logits, state = call(model, inputs, state)
        total += functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return math.exp(total / count)


def train(model, data, steps, sparsity, batch_size=20, length=35, lr=2e-3):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    pruner = sparsernn.Pruner(model, sparsernn.NarangSchedule(                       # added line 1
        start=steps // 5, ramp=steps // 2, end=3 * steps // 4, freq=max(1, steps // 100), sparsity=sparsity),
        optimizer=optimizer)
    model.train()
    step, state = 0, None
    while step < steps:
        for inputs, targets in batches(data, batch_size, length):
            if inputs.shape[1] < length:  # the short last chunk: start the next pass
                break
            state = tuple(s.detach() for s in state) if state is not None else None
            logits, state = model(inputs, state)
            loss = functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
            pruner.step()                                                             # added line 2
            step += 1
            if step % max(1, steps // 10) == 0 or step == steps:
                print(f"step {step}/{steps}  loss {loss.item():.3f}  sparsity {pruner.sparsity():.1%}")
            if step == steps:
                break
    return pruner.sparsity()


def speed(models, tokens, batch_size=16, length=35, seconds=4.0):
    """Tokens per second of each model, in turns: streaming at batch 1, and whole (16, 35) sequences."""
    stream = tokens[:200].view(1, -1)
    sequences = tokens[:batch_size * length].view(batch_size, length)

    def streaming(model):
        def run():
            state = None
            if isinstance(model, sparsernn.engine.SparseProgram):
                model.reset()
            for t in range(stream.shape[1]):
                _, state = call(model, stream[:, t:t + 1], state)
        return run

    def whole(model):
        def run():
            if isinstance(model, sparsernn.engine.SparseProgram):
                model.reset()
            call(model, sequences, None)
        return run

    with torch.inference_mode():
        streamed = measure_in_turns({name: streaming(m) for name, m in models.items()}, seconds)
        whole = measure_in_turns({name: whole(m) for name, m in models.items()}, seconds)
    return ({name: stream.numel() / us * 1e6 for name, us in streamed.items()},
            {name: sequences.numel() / us * 1e6 for name, us in whole.items()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/ptb")
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--max-words", type=int, default=None, help="read only this many words per split")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per comparison")
    parser.add_argument("--out", default=None, help="folder for the model file (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data, vocabulary = read_corpus(args.data, args.vocab, args.max_words)
    model = WordLM(len(vocabulary), args.hidden, args.hidden)
    reached = train(model, data["train"], args.steps, args.sparsity)
    model.eval()

    fast = sparsernn.sparsify(model, threads=1)
    example = data["test"][:16].view(1, -1)  # (B, T): a sequence, as the forward takes it
    program = sparsernn.sparsify(model, threads=1, example_inputs=(example,))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.out or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "lm.safetensors"
        saved = sparsernn.save_sparse(model, path, example_inputs=(example,))
        (folder / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n")  # for examples/c/generate.c
        loaded = sparsernn.load_sparse(WordLM(len(vocabulary), args.hidden, args.hidden), path)
    ppl = {name: perplexity(m, data["test"]) for name, m in
           (("pytorch", model), ("sparsified", fast), ("program", program), ("loaded from file", loaded))}
    streaming, sequences = speed({"pytorch": model, "sparsified": fast, "program": program}, data["test"],
                                 seconds=args.seconds)

    print(f"\nLSTM {args.hidden} x 2, vocabulary {len(vocabulary)}, {args.steps} steps; "
          f"sparsity reached {reached:.1%} (asked {args.sparsity:.0%})")
    print("test perplexity: " + ", ".join(f"{name} {value:.2f}" for name, value in ppl.items()))
    print(f"file: {saved['bytes'] / 1e6:.2f} MB, {saved['bytes'] / saved['dense_fp32_bytes']:.1%} of the "
          f"dense fp32 state ({saved['dense_fp32_bytes'] / 1e6:.2f} MB)")
    print("\n| one thread | PyTorch tokens/s | sparsified tokens/s | program tokens/s |\n|---|---|---|---|")
    for label, rates in (("streaming, batch 1", streaming), ("whole sequences, 16 x 35", sequences)):
        print(f"| {label} | {rates['pytorch']:,.0f} | {rates['sparsified']:,.0f} "
              f"({rates['sparsified'] / rates['pytorch']:.2f}x) | {rates['program']:,.0f} "
              f"({rates['program'] / rates['pytorch']:.2f}x) |")
    return {"sparsity": reached, "perplexity": ppl, "file": saved, "streaming": streaming,
            "sequences": sequences}


if __name__ == "__main__":
    main()
