"""Your own bidirectional GRU tagger on packed sequences, pruned to 90% by sparsernn, then shipped.

    python examples/gru_tagger.py --data ../shared/data/tinyshakespeare/input.txt

The task: word segmentation. Each line of text loses its spaces and every character is tagged 1 where
a word begins, else 0, which needs both the characters before and after (a bidirectional tagger).
Lines of different lengths go through the GRU as one ``PackedSequence`` per batch.

Same path as ``lstm_language_model.py``: an ordinary loop plus the Pruner, then ``sparsify`` (module by
module, and with ``example_inputs`` the whole forward as one program, packing included: each line of a
batch runs over its own length), ``save_sparse`` with the program, ``load_sparse`` into a fresh instance,
and speed against PyTorch (one line per call, batch 1, one thread, in turns). The saved file runs in the
C runtime too: ``build/runtime/sparsernn-run tagger.safetensors --input line.npy --output tags.npy
--whole`` (one line of character ids a run).
"""

import argparse
import random
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

import sparsernn
from sparsernn.bench import measure_in_turns


class Tagger(nn.Module):
    def __init__(self, alphabet_size, embedding_size=32, hidden_size=128, layers=2):
        super().__init__()
        self.embedding = nn.Embedding(alphabet_size, embedding_size, padding_idx=0)
        self.gru = nn.GRU(embedding_size, hidden_size, num_layers=layers, batch_first=True,
                          bidirectional=True)
        self.output = nn.Linear(2 * hidden_size, 2)

    def forward(self, chars, lengths):  # chars (B, T) padded with 0, lengths (B,)
        packed = pack_padded_sequence(self.embedding(chars), lengths, batch_first=True,
                                      enforce_sorted=False)
        hidden, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)  # (B, T, 2H)
        return self.output(hidden)  # (B, T, 2)


def read_lines(path, max_lines=None):
    """(characters, word starts) of every line with at least two words; 90/5/5 split, fixed order."""
    lines = [line.split() for line in Path(path).read_text().splitlines()[:max_lines]]
    examples = [("".join(words), [int(i == 0) for w in words for i in range(len(w))])
                for words in lines if len(words) >= 2]
    random.Random(0).shuffle(examples)
    alphabet = ["<pad>"] + sorted({c for text, _ in examples for c in text})
    index = {c: i for i, c in enumerate(alphabet)}
    encoded = [(torch.tensor([index[c] for c in text]), torch.tensor(tags)) for text, tags in examples]
    twentieth = len(encoded) // 20
    splits = {"train": encoded[2 * twentieth:], "valid": encoded[:twentieth],
              "test": encoded[twentieth:2 * twentieth]}
    return splits, alphabet


def collate(examples):
    chars, tags = zip(*examples, strict=True)
    lengths = torch.tensor([len(c) for c in chars])
    padded_tags = pad_sequence(tags, batch_first=True, padding_value=-1)  # -1: ignored by the loss
    return pad_sequence(chars, batch_first=True), lengths, padded_tags


@torch.no_grad()
def f1(model, examples, batch_size=64):
    """F1 of the word-start tags (the first character of a line, always a start, not counted)."""
    hits = predicted = actual = 0
    for start in range(0, len(examples), batch_size):
        chars, lengths, tags = collate(examples[start:start + batch_size])
        guess = model(chars, lengths).argmax(-1)[:, 1:]
        tags = tags[:, 1:]
        hits += int(((guess == 1) & (tags == 1)).sum())
        predicted += int(((guess == 1) & (tags >= 0)).sum())
        actual += int((tags == 1).sum())
    return 2 * hits / max(1, predicted + actual)


def train(model, examples, steps, sparsity, batch_size=32, lr=3e-3):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    pruner = sparsernn.Pruner(model, sparsernn.NarangSchedule(
        start=steps // 5, ramp=steps // 2, end=3 * steps // 4, freq=max(1, steps // 100), sparsity=sparsity),
        optimizer=optimizer)
    model.train()
    order = random.Random(1)
    for step in range(1, steps + 1):
        chars, lengths, tags = collate(order.sample(examples, batch_size))
        loss = functional.cross_entropy(model(chars, lengths).flatten(0, 1), tags.flatten(), ignore_index=-1)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        pruner.step()
        if step % max(1, steps // 10) == 0:
            print(f"step {step}/{steps}  loss {loss.item():.3f}  sparsity {pruner.sparsity():.1%}")
    return pruner.sparsity()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/tinyshakespeare/input.txt")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--max-lines", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per comparison")
    parser.add_argument("--out", default=None, help="keep tagger.safetensors here (default: not kept)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    splits, alphabet = read_lines(args.data, args.max_lines)
    model = Tagger(len(alphabet), hidden_size=args.hidden)
    reached = train(model, splits["train"], args.steps, args.sparsity)
    model.eval()

    example = collate(splits["valid"][:3])[:2]  # (characters, lengths) of a batch: the forward's arguments
    fast = sparsernn.sparsify(model)
    program = sparsernn.sparsify(model, example_inputs=example)
    with tempfile.TemporaryDirectory() as temporary:
        path = Path(args.out or temporary) / "tagger.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = sparsernn.save_sparse(model, path, example_inputs=example)
        loaded = sparsernn.load_sparse(Tagger(len(alphabet), hidden_size=args.hidden), path)
    copies = {"pytorch": model, "sparsified": fast, "program": program, "loaded from file": loaded}
    scores = {name: f1(m, splits["test"]) for name, m in copies.items()}
    chars, lengths, _ = collate(splits["test"][:1])
    with torch.inference_mode():
        times = measure_in_turns({name: (lambda m=copies[name]: m(chars, lengths)) for name in
                                  ("pytorch", "sparsified", "program")}, args.seconds)

    print(f"\nbidirectional GRU {args.hidden} x 2, {args.steps} steps; sparsity reached {reached:.1%} "
          f"(asked {args.sparsity:.0%})")
    print("test word-start F1: " + ", ".join(f"{name} {value:.3f}" for name, value in scores.items()))
    print(f"file: {saved['bytes'] / 1e6:.2f} MB, {saved['bytes'] / saved['dense_fp32_bytes']:.1%} of the "
          f"dense fp32 state")
    print(f"one line of {int(lengths[0])} characters, batch 1, one thread: PyTorch "
          f"{times['pytorch']:,.0f} us, sparsified {times['sparsified']:,.0f} us "
          f"({times['pytorch'] / times['sparsified']:.2f}x), program {times['program']:,.0f} us "
          f"({times['pytorch'] / times['program']:.2f}x)")
    return {"sparsity": reached, "f1": scores, "file": saved, "us": times}


if __name__ == "__main__":
    main()
