import pytest
import torch

from sparsernn.config import SpeechModelConfig
from sparsernn.models.ctc import CLIP, ClippedReLURNN, SpeechModel, reverse_padded
from sparsernn.prune import find_prunable

CONV = ({"channels": 4, "kernel": (5, 5), "stride": (2, 2)},
        {"channels": 3, "kernel": (3, 3), "stride": (2, 1)})


def model(cell="gru", bidirectional=True, layers=2, hidden=8, **fields):
    torch.manual_seed(0)
    config = SpeechModelConfig(conv=CONV, cell=cell, hidden_size=hidden, layers=layers,
                               bidirectional=bidirectional, **fields)
    return SpeechModel(16, 29, config)


def test_reverse_padded_reverses_within_each_length():
    x = torch.arange(8.0).view(4, 2, 1)  # (T=4, B=2): column 0 = 0 2 4 6, column 1 = 1 3 5 7
    out = reverse_padded(x, torch.tensor([4, 2]))
    assert out[:, 0, 0].tolist() == [6, 4, 2, 0]
    assert out[:, 1, 0].tolist() == [3, 1, 5, 7]  # first two reversed, padding kept


def test_clipped_relu_rnn_matches_a_step_by_step_reference():
    torch.manual_seed(1)
    rnn = ClippedReLURNN(3, 5, bidirectional=True)
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(8)  # large enough that the clip at 20 is reached
    x, lengths = torch.randn(6, 2, 3), torch.tensor([6, 4])
    out = rnn(x, lengths)

    def run(seq, suffix):
        h, outs = torch.zeros(5), []
        for xt in seq:
            pre = (getattr(rnn, f"weight_ih_l0{suffix}") @ xt + getattr(rnn, f"bias_ih_l0{suffix}")
                   + getattr(rnn, f"weight_hh_l0{suffix}") @ h + getattr(rnn, f"bias_hh_l0{suffix}"))
            h = pre.clamp(0, 20)
            outs.append(h)
        return torch.stack(outs)

    for b, length in enumerate(lengths.tolist()):
        forward = run(x[:length, b], "")
        backward = run(x[:length, b].flip(0), "_reverse").flip(0)
        expected = torch.cat([forward, backward], dim=-1)
        torch.testing.assert_close(out[:length, b], expected, atol=1e-4, rtol=1e-5)
    assert out.max() == CLIP and out.min() == 0


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_clipped_relu"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_output_shapes_lengths_and_padding_invariance(cell, bidirectional):
    net = model(cell, bidirectional).eval()
    lengths = torch.tensor([37, 20, 9])
    features = torch.randn(3, 16, 37)
    for row, length in enumerate(lengths.tolist()):
        features[row, :, length:] = 0  # padding, as collate leaves it
    log_probs, out_lengths = net(features, lengths)
    assert out_lengths.tolist() == [net.output_lengths(n) for n in lengths.tolist()] == [19, 10, 5]
    assert log_probs.shape == (19, 3, 29)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(19, 3))
    for row, length in enumerate(lengths.tolist()):  # alone, the utterance gets the same output
        alone, alone_length = net(features[row:row + 1, :, :length], lengths[row:row + 1])
        n = int(alone_length)
        torch.testing.assert_close(alone[:n, 0], log_probs[:n, row], atol=1e-5, rtol=1e-5)


def test_the_first_recurrent_layer_has_its_input_norm_unless_turned_off():
    net = model()
    assert net.input_norm.norm.num_features == 3 * 4 == net.rnns[0].input_size  # channels x bins
    assert "input_norm.norm.running_mean" in net.state_dict()
    features = torch.randn(2, 16, 30) * 5 + 3
    net.train()(features, torch.tensor([30, 20]))  # batch statistics: the norm's input is centred
    assert net.input_norm.norm.running_mean.abs().sum() > 0
    plain = model(input_norm=False)
    assert plain.input_norm is None and not any(k.startswith("input_norm") for k in plain.state_dict())


def test_input_weights_are_drawn_by_fan_in_when_asked():
    bound = {"hidden": 32 ** -0.5, "fan_in": 12 ** -0.5}  # hidden 32; the first layer's input is 12 wide
    for init in ("hidden", "fan_in"):
        net = model(hidden=32, input_init=init)
        first = [w for n, w in net.rnns[0].named_parameters() if n.startswith("weight_ih")]
        assert len(first) == 2  # both directions
        for weight in first:
            assert weight.abs().max() <= bound[init]
            assert weight.abs().max() > 0.9 * bound[init]  # 1152 draws fill the range
        for name, weight in [*net.rnns[0].named_parameters(), *net.rnns[1].named_parameters()]:
            if not name.startswith("weight_ih") or weight.shape[1] == 32:  # the rest keep PyTorch's draw
                assert weight.abs().max() <= 32 ** -0.5


def test_sequence_batch_norm_ignores_padding():
    net = model().train()
    norm = net.norms[0]
    x, mask = torch.randn(5, 2, 8), torch.tensor([[1, 1]] * 3 + [[1, 0]] * 2, dtype=torch.bool)
    x_padded = x.clone()
    x_padded[~mask] = 1000.0
    torch.testing.assert_close(norm(x, mask)[mask], norm(x_padded, mask)[mask])
    assert (norm(x_padded, mask)[~mask] == 0).all()


def test_pruner_groups_and_gates_of_the_speech_model():
    net = model("gru", layers=3)
    recurrent = {w.name: w.blocks for w in find_prunable(net, ["recurrent"], per_gate=True)}
    assert set(recurrent) == {f"rnns.{i}.weight_{kind}_l0{suffix}" for i in range(3)
                              for kind in ("ih", "hh") for suffix in ("", "_reverse")}
    assert set(recurrent.values()) == {3}  # GRU gates r|z|n
    assert [w.name for w in find_prunable(net, ["linear"])] == ["fc.weight"]
    assert [w.name for w in find_prunable(net, ["conv"])] == ["conv.0.weight", "conv.3.weight"]
    clipped = model("rnn_clipped_relu")
    assert {w.blocks for w in find_prunable(clipped, ["recurrent"], per_gate=True)} == {1}


def test_parameter_count_matches_a_hand_count():
    config = SpeechModelConfig(conv=CONV, cell="gru", hidden_size=8, layers=2, bidirectional=True)
    conv = 4 * 1 * 25 + 2 * 4 + 3 * 4 * 9 + 2 * 3  # weights (no bias) and batch-norm scale/shift
    rnn_input = 3 * 4  # 3 channels x 16 bins -> 8 -> 4
    gru = lambda i: 2 * (3 * 8 * (i + 8) + 2 * 3 * 8)  # noqa: E731 - two directions
    norms = 2 * rnn_input + 2 * 8 + 2 * 8  # before each recurrent layer, and before the output layer
    expected = conv + gru(rnn_input) + gru(8) + norms + 8 * 29 + 29
    assert sum(p.numel() for p in SpeechModel(16, 29, config).parameters()) == expected



def test_nonzero_parameters_leave_out_batch_norm_statistics():
    from sparsernn.models.lm import nonzero_parameters

    net = model()
    assert nonzero_parameters(net.state_dict()) == sum(int(p.count_nonzero()) for p in net.parameters())
