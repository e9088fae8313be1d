"""docs/FORMAT.md's worked example of a program is what save_sparse writes for its model."""

import json
import re
from pathlib import Path

import torch
from torch import nn

from sparsernn import save_sparse
from sparsernn.export import load_exported

FORMAT = Path(__file__).parents[2] / "docs" / "FORMAT.md"


class WordLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(40, 12)
        self.rnn = nn.GRU(12, 16, 2)
        self.decoder = nn.Linear(16, 40)

    def forward(self, tokens):  # (T, B)
        output, _ = self.rnn(self.embedding(tokens))  # (T, B, 16)
        return self.decoder(output).log_softmax(-1)  # (T, B, 40)


def test_the_worked_example_is_what_save_sparse_writes(tmp_path):
    text = FORMAT.read_text()
    documented = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1).replace('"...", ', "0, ")
                            .replace('"..."}', "0}"))
    save_sparse(WordLM(), tmp_path / "lm.safetensors", example_inputs=(torch.zeros(5, 1, dtype=torch.long),))
    program = load_exported(tmp_path / "lm.safetensors").metadata["program"]
    for op in program["ops"]:
        del op["module"]
    program["in_spec"] = program["out_spec"] = 0
    assert program == documented
