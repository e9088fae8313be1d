"""Every code snippet in the README and docs/guide is checked, so that a renamed function, option, make
target or file cannot leave a stale guide: each fence is preceded by ``<!-- snippet: KIND -->`` (how it is
checked) or ``<!-- illustrative: REASON -->``.

Python snippets run, in a temporary directory, with the names they assume (``model``, ``tokens``, a
file they open) made by the setup their kind names; shell lines are parsed by the commands they name
(``sparsernn``'s own argument parser, the Makefile's targets, ``sparsernn-run``'s options) with the files
they read present in the repository; the C snippet calls only functions of ``sparsernn.h``; the YAML one
is a study's claims; a file list names files that exist.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sparsernn

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
MARKER = re.compile(r"<!-- (snippet|illustrative): (.*?) -->")


def snippets(path: Path) -> list[tuple[str, str, str, int]]:
    """(marker kind, its argument, the fence's text, line number) of every fence in ``path``; a fence
    without a marker has kind None."""
    lines, found, inside, start = path.read_text().split("\n"), [], False, 0
    for number, line in enumerate(lines):
        if not line.startswith("```"):
            continue
        if not inside:
            start = number
        else:
            marker = MARKER.fullmatch(lines[start - 1]) if start else None
            found.append((marker.group(1) if marker else None, marker.group(2) if marker else "",
                          "\n".join(lines[start + 1:number]), start + 1))
        inside = not inside
    return found


ALL = [(path.relative_to(ROOT).as_posix(), *snippet) for path in DOCUMENTS for snippet in snippets(path)]


def test_every_snippet_is_checked_or_says_why_not():
    assert len(ALL) >= 15
    for where, kind, argument, _, line in ALL:
        assert kind is not None, f"{where}:{line}: no <!-- snippet: ... --> or <!-- illustrative: ... -->"
        assert argument.strip(), f"{where}:{line}: say what checks it, or why nothing can"
        if kind == "snippet":
            assert argument in CHECKS, f"{where}:{line}: no check named {argument!r}"


def of_kind(kind: str) -> list:
    return [pytest.param(text, id=f"{where}:{line}") for where, marker, name, text, line in ALL
            if marker == "snippet" and name == kind]


# -- Python: run with the names the snippet assumes ----------------------------------------------------

class WordLM(nn.Module):
    """A user's own small LM, as the guides' ``model``: tokens (T, B) -> logits (T, B, V)."""

    def __init__(self, *_):
        super().__init__()
        self.embedding = nn.Embedding(50, 8)
        self.rnn = nn.LSTM(8, 16)
        self.decoder = nn.Linear(16, 50)

    def forward(self, tokens):
        return self.decoder(self.rnn(self.embedding(tokens))[0])


def _pruned(model: nn.Module) -> nn.Module:
    sparsernn.Pruner(model, sparsernn.OneShotSchedule(at=1, sparsity=0.9)).step()
    return model.eval()


def setup_training_loop(tmp_path) -> dict:
    """The README's loop: enough batches for its schedule (end=10000) to reach 0.9."""
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
    batch = torch.randn(4, 8)
    return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
            "data": [batch] * 10_000, "loss_fn": lambda out: out.pow(2).mean(), "inputs": batch,
            "MyModel": lambda *_: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))}


def setup_model(tmp_path) -> dict:
    return {"model": _pruned(WordLM()), "MyModel": WordLM}


def setup_lm(tmp_path) -> dict:
    return {**setup_model(tmp_path), "tokens": torch.zeros(35, 1, dtype=torch.long)}


def setup_ptb90(tmp_path) -> dict:
    """ptb90.safetensors: a small LM of the built-in family, exported as `sparsernn export` does."""
    from sparsernn.config import ModelConfig
    from sparsernn.export import lm_architecture, save_sparse
    from sparsernn.models.lm import LanguageModel

    config = ModelConfig(cell="lstm", embedding_size=8, hidden_size=16, layers=2, dropout=0.0)
    save_sparse(_pruned(LanguageModel(50, config)), tmp_path / "ptb90.safetensors", extra={
        "architecture": lm_architecture(config.model_dump(), 50), "vocabulary": [str(i) for i in range(50)]})
    return {"tokens": np.zeros((5, 2), np.int64)}


def setup_an4(tmp_path) -> dict:
    """an4-90.safetensors, a small speech model of the built-in family, and utterance.flac."""
    import soundfile

    from sparsernn.export import save_sparse, speech_architecture
    from tests.engine.test_engine import pruned_speech_model

    model, _, config = pruned_speech_model("gru", True)
    data = {"sample_rate": 16000, "features": "logmel", "n_mels": 16, "window_ms": 20.0, "hop_ms": 10.0}
    save_sparse(model, tmp_path / "an4-90.safetensors", extra={
        "vocabulary": [str(i) for i in range(29)],
        "architecture": speech_architecture(config.model_dump(mode="json"), data, 29)})
    soundfile.write(tmp_path / "utterance.flac", np.random.default_rng(0).uniform(-0.1, 0.1, 16000), 16000)
    return {}


SETUPS = {"training-loop": setup_training_loop, "model": setup_model, "lm": setup_lm, "ptb90": setup_ptb90,
          "an4": setup_an4}


@pytest.mark.parametrize(("kind", "text"), [pytest.param(kind, *p.values, id=p.id) for kind in SETUPS
                                            for p in of_kind(kind)])
def test_python_snippets_run(kind, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = {"sparsernn": sparsernn, "torch": torch, **SETUPS[kind](tmp_path)}
    exec(compile(text, f"<{kind} snippet>", "exec"), names)  # noqa: S102
    if kind == "training-loop":  # what its comment says
        assert names["pruner"].sparsity() == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("text", of_kind("signature"))
def test_a_signature_snippet_is_the_functions_own(text):
    """``Name(a, b=1, *, c=2)``: the parameters, their kinds and defaults as ``inspect.signature``'s."""
    function = ast.parse(f"def {text.strip()}: pass").body[0]
    documented = inspect.Signature([
        inspect.Parameter(a.arg, kind, default=inspect.Parameter.empty if d is None else ast.literal_eval(d))
        for arguments, kind in ((function.args.args, inspect.Parameter.POSITIONAL_OR_KEYWORD),
                                (function.args.kwonlyargs, inspect.Parameter.KEYWORD_ONLY))
        for a, d in zip(arguments, _defaults(function.args, arguments), strict=True)])
    actual = inspect.signature(getattr(sparsernn, function.name))
    bare = actual.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                      for p in actual.parameters.values()],
                          return_annotation=inspect.Signature.empty)
    assert str(documented) == str(bare)


def _defaults(arguments: ast.arguments, names: list) -> list:
    if names is arguments.kwonlyargs:
        return arguments.kw_defaults
    return [None] * (len(names) - len(arguments.defaults)) + arguments.defaults


# -- shell: every command, option, target and file exists ----------------------------------------------

def _commands(text: str) -> list[list[str]]:
    """Each line's commands as words: comments dropped, pipes split, ``[--a x|y]`` taken as ``--a x``."""
    commands = []
    for line in text.split("\n"):
        line = line.split(" # ")[0].split("  #")[0]
        line = re.sub(r"\[([^]]*)\]", lambda m: m.group(1).split("|")[0], line)
        commands += [shlex.split(part) for part in line.split(" | ") if part.strip()]
    return commands


def _sparsernn_arguments(words: list[str]) -> list[str] | None:
    for k, word in enumerate(words):
        if word.endswith("bin/sparsernn") or word == "sparsernn" and k == 0:
            return words[k + 1:]
        if word == "-m" and words[k + 1] == "sparsernn":
            return words[k + 2:]
    return None


@pytest.mark.parametrize("text", of_kind("shell"))
def test_shell_snippets_name_real_commands_options_and_files(text):
    from sparsernn.cli import build_parser

    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    runner = (ROOT / "runtime" / "cli" / "sparsernn-run.c").read_text()
    for words in _commands(text):
        if words[0] == "make":
            assert set(w for w in words[1:] if "=" not in w) <= targets, words
        elif words[0].endswith("sparsernn-run"):
            assert all(f'"{w}"' in runner for w in words if w.startswith("--")), words
        elif (arguments := _sparsernn_arguments(words)) is not None:
            try:
                build_parser().parse_args(arguments)
            except SystemExit:
                pytest.fail(f"sparsernn does not take: {' '.join(arguments)}")
            for word in arguments:
                if word.startswith("configs/"):
                    assert (ROOT / word).is_file(), word
        else:
            assert words[0] in ("echo",), f"a command this test does not know: {words}"


# -- C, YAML and file lists ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", of_kind("c-api"))
def test_the_c_snippet_calls_the_api(text):
    header = (ROOT / "runtime" / "include" / "sparsernn.h").read_text()
    for name in set(re.findall(r"\bsr_\w+", text)):
        assert re.search(rf"\b{name}\b", header), name


@pytest.mark.parametrize("text", of_kind("study-claims"))
def test_the_yaml_snippet_is_a_studys_claims(text):
    import yaml

    from sparsernn.study.claims import Claim

    claims = [Claim.model_validate(entry) for entry in yaml.safe_load(text)["claims"]]
    assert claims


@pytest.mark.parametrize("text", of_kind("paths"))
def test_a_file_list_names_files_that_exist(text):
    for line in text.split("\n"):
        first = line.split()[0] if line.strip() and not line.startswith(" ") else None
        if first and "/" in first:
            assert (ROOT / first).exists(), first


CHECKS = {*SETUPS, "signature", "shell", "c-api", "study-claims", "paths"}
