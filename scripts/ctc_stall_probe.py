"""What a speech run's first few hundred steps look like inside: why one initialisation trains and
another stalls. Trains a speech config as ``sparsernn train`` does (same task, model, optimizer, clip
and warmup) and every ``--every`` steps prints, for the batch just trained on:

- ``loss``: the CTC loss per label; ``grad``: the gradient norm before clipping;
- ``blank``: the share of valid output frames whose most likely symbol is the blank;
- ``logit``: the standard deviation of the output layer's logits over the valid frames;
- ``dead``: the share of the last convolution's channels that are zero on every valid frame, and
  ``clip``: the share of its outputs at the clipped ReLU's ceiling;
- ``in``: the mean and standard deviation of the first recurrent layer's input;
- for each recurrent layer (forward direction, GRU): ``z``/``r`` the share of update / reset gate values
  below 0.01 or above 0.99 (saturated), ``n`` the share of candidate values beyond +-0.99.

    python scripts/ctc_stall_probe.py configs/an4-dense.yaml --steps 300 --set train.seed=2

Nothing is written; the numbers are the output.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from sparsernn.config import load_config
from sparsernn.models import build_model
from sparsernn.models.ctc import CLIP
from sparsernn.train import distributed
from sparsernn.train.loop import make_optimizer
from sparsernn.train.tasks import make_task


@torch.no_grad()
def gru_saturation(rnn: nn.GRU, x: torch.Tensor, mask: torch.Tensor) -> dict:
    """Saturated gate shares of a one-layer GRU's forward direction run over x (T, B, F)."""
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    h = x.new_zeros(x.shape[1], rnn.hidden_size)
    counts = {"z": 0.0, "r": 0.0, "n": 0.0}
    for t in range(x.shape[0]):
        gi_r, gi_z, gi_n = (x[t] @ w_ih.t() + b_ih).chunk(3, dim=-1)
        gh_r, gh_z, gh_n = (h @ w_hh.t() + b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
        valid = mask[t][:, None]
        counts["z"] += float((((z < 0.01) | (z > 0.99)) & valid).sum())
        counts["r"] += float((((r < 0.01) | (r > 0.99)) & valid).sum())
        counts["n"] += float(((n.abs() > 0.99) & valid).sum())
        h = torch.where(valid, (1 - z) * n + z * h, h)
    total = float(mask.sum()) * rnn.hidden_size
    return {key: value / total for key, value in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    ranks = distributed.setup()
    task = make_task(config, ranks, None)
    torch.manual_seed(config.train.seed)
    model = build_model(config, config.model, len(task.vocabulary))
    optimizer = make_optimizer(model, config)

    seen: dict = {}
    recurrent = model._recurrent

    def capture(rnn, x, lengths):  # the padded input of each recurrent layer
        seen.setdefault("inputs", []).append(x.detach())
        return recurrent(rnn, x, lengths)

    model._recurrent = capture
    for name, module in (("conv", model.conv[-1]), ("logits", model.fc)):
        module.register_forward_hook(lambda module, inputs, output, name=name: seen.__setitem__(
            name, output.detach()))

    step, epoch = 0, 0
    print(f"seed {config.train.seed}, lr {config.train.lr}, {task.steps_per_epoch} steps per epoch")
    while step < args.steps:
        for _, batch in task.batches(epoch, 0):
            seen.clear()
            result = task.step_loss(model, None, batch, {})
            optimizer.zero_grad()
            result.loss.backward()
            grad = float(nn.utils.clip_grad_norm_(model.parameters(), config.train.clip or float("inf")))
            if step < config.train.warmup:
                for group in optimizer.param_groups:
                    group["lr"] = config.train.lr * (step + 1) / config.train.warmup
            optimizer.step()
            step += 1
            if step % args.every == 0 or step == 1:
                lengths = model.output_lengths(batch.lengths).clamp(min=1)
                frames = seen["logits"].shape[0]
                mask = torch.arange(frames)[:, None] < lengths[None]  # (T, B)
                logits = seen["logits"][mask]
                blank = float((logits.argmax(-1) == 0).float().mean())
                conv = seen["conv"]  # (B, C, bins, T)
                valid = (torch.arange(conv.shape[-1])[None] < lengths[:, None])[:, None, None]
                alive = ((conv > 0) & valid).flatten(2).any(-1).any(0)  # per channel
                positions = float(valid.sum()) * conv[0, :, :, 0].numel()
                at_clip = float(((conv >= CLIP) & valid).sum()) / positions
                first = seen["inputs"][0][mask]
                parts = [f"step {step:4d}", f"loss {result.loss.item():6.2f}", f"grad {grad:7.2f}",
                         f"blank {blank:5.1%}", f"logit {float(logits.std()):5.2f}",
                         f"dead {1 - float(alive.float().mean()):5.1%}", f"clip {at_clip:5.1%}",
                         f"in {float(first.mean()):5.2f}/{float(first.std()):5.2f}"]
                for i, (rnn, x) in enumerate(zip(model.rnns, seen["inputs"], strict=True)):
                    if isinstance(rnn, nn.GRU):
                        s = gru_saturation(rnn, x, mask)
                        parts.append(f"L{i} z {s['z']:5.1%} r {s['r']:5.1%} n {s['n']:5.1%}")
                print("  ".join(parts), flush=True)
            if step >= args.steps:
                break
        epoch += 1


if __name__ == "__main__":
    main()
