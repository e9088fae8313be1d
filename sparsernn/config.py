"""Typed, validated run configuration: YAML sections data, model, prune, train, plus --set overrides.

Three tasks share the sections: language modelling (``data.kind: text``, the default; ``model.family:
lm``), speech recognition with CTC (``data.kind: an4``, ``manifest`` or ``librispeech``; ``model.family:
ds2``) and translation (``data.kind: translation``; ``model.family: seq2seq``). The model family follows
the data kind unless given. Unknown keys and
out-of-range values are rejected with the key's full dotted name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sparsernn.errors import UserError
from sparsernn.prune.masks import GROUPS


class ConfigError(UserError):
    """A user's configuration mistake: the message names the file or the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Text for language modelling."""

    kind: Literal["text"] = "text"
    path: Path = Field(description="directory of {ptb.,}{train,valid,test}.txt, or a text file (char "
                       "level; stdlib:pydoc is Python's bundled reference docs)")
    level: Literal["word", "char"] = "word"
    batch_size: int = Field(20, ge=1)
    eval_batch_size: int = Field(10, ge=1)
    bptt: int = Field(35, ge=1, description="tokens per truncated back-propagation window")
    split: tuple[float, float] = Field((0.9, 0.05), description="train, valid fractions of a single file")


class ModelConfig(_Section):
    """Language model: embedding -> recurrent stack -> decoder."""

    family: Literal["lm"] = "lm"
    cell: Literal["rnn_tanh", "rnn_relu", "gru", "lstm"] = "lstm"
    embedding_size: int = Field(200, ge=1)
    hidden_size: int = Field(200, ge=1)
    layers: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    tie_weights: bool = False

    @model_validator(mode="after")
    def _tying_needs_equal_sizes(self) -> ModelConfig:
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ValueError("tie_weights needs embedding_size == hidden_size")
        return self


SPEECH_DATA = ("an4", "manifest", "librispeech")


class SpeechDataConfig(_Section):
    """Speech with transcripts for CTC: the AN4 or LibriSpeech layout, or manifests (CSV/JSONL, NeMo,
    Hugging Face audiofolder); audio in any format libsndfile reads (WAV, FLAC, OGG, MP3, ...)."""

    kind: Literal["an4", "manifest", "librispeech"]
    path: Path = Field(description="an4: the AN4 root (etc/, wav/); manifest: the training manifest (or "
                       "audiofolder); librispeech: the unpacked training subset (SPEAKER/CHAPTER/...)")
    valid: Path | None = Field(None, description="manifest or librispeech: the validation manifest or "
                               "subset (default: held-out training speakers)")
    test: Path | None = Field(None, description="manifest or librispeech: the test manifest or subset")
    manifest_format: Literal["auto", "csv", "jsonl", "nemo", "audiofolder"] = Field(
        "auto", description="manifest layout; auto: from the fields of its first row")
    valid_fraction: float = Field(0.08, gt=0.0, lt=1.0, description="share of training speakers "
                                  "held out for validation when there is no validation set")
    valid_seed: int = Field(0, description="draws the held-out speakers; apart from train.seed, so that "
                            "every initialisation is validated on the same speakers")
    sample_rate: int = Field(16000, ge=1000, description="audio is resampled to this rate")
    features: Literal["logmel", "spectrogram"] = "logmel"
    n_mels: int = Field(64, ge=8)
    window_ms: float = Field(20.0, gt=0.0)
    hop_ms: float = Field(10.0, gt=0.0)
    freq_masks: int = Field(0, ge=0, description="SpecAugment: frequency masks per training utterance")
    freq_mask_width: int = Field(8, ge=1)
    time_masks: int = Field(0, ge=0, description="SpecAugment: time masks per training utterance")
    time_mask_width: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    on_bad_audio: Literal["error", "skip"] = Field("error", description="a missing, unreadable or "
                                                  "too-short file, or a transcript outside the "
                                                  "alphabet: stop before training, or skip and count")


class TranslationDataConfig(_Section):
    """Line-aligned parallel text (one sentence per line, gzip or plain), a subword vocabulary trained
    on the training split."""

    kind: Literal["translation"]
    path: Path = Field(description="folder of {split}.{language} or {split}.{language}.gz files")
    source: str = Field("de", min_length=1, description="source language suffix")
    target: str = Field("en", min_length=1, description="target language suffix")
    train: str = "train"
    valid: str = "val"
    test: str = "test_2016_flickr"
    vocabulary: Literal["unigram", "bpe"] = Field("unigram", description="sentencepiece model type")
    vocab_size: int = Field(8000, ge=32, description="one subword vocabulary shared by both languages")
    max_length: int = Field(64, ge=1, description="longer pairs (in subwords) are counted and skipped")
    batch_size: int = Field(64, ge=1, description="sentence pairs per batch, bucketed by length")
    eval_batch_size: int = Field(128, ge=1)
    max_output: int = Field(80, ge=1, description="decoding stops after this many subwords")


class ConvLayer(_Section):
    channels: int = Field(ge=1)
    kernel: tuple[int, int] = Field(description="(frequency, time)")
    stride: tuple[int, int] = Field(description="(frequency, time)")


class SpeechModelConfig(_Section):
    """Deep Speech 2 family: 2-D convolutions -> recurrent layers with sequence-wise batch norm -> FC."""

    family: Literal["ds2"] = "ds2"
    conv: tuple[ConvLayer, ...] = (ConvLayer(channels=32, kernel=(21, 11), stride=(2, 2)),
                                   ConvLayer(channels=32, kernel=(11, 5), stride=(2, 1)))
    cell: Literal["rnn_clipped_relu", "rnn_tanh", "gru", "lstm"] = "gru"
    hidden_size: int = Field(256, ge=1)
    layers: int = Field(3, ge=1)
    bidirectional: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    input_norm: bool = Field(True, description="sequence-wise batch norm on the first recurrent layer's "
                             "input too (DS2's form); without it an Adam rate of 3e-3 stalled some AN4 "
                             "initialisations")
    input_init: Literal["hidden", "fan_in"] = Field(
        "hidden", description="range of the recurrent layers' input weights: within 1/sqrt(hidden size) "
        "(PyTorch's draw) or within 1/sqrt(input size), which starts every width's gates alike")

    @model_validator(mode="after")
    def _conv_needed(self) -> SpeechModelConfig:
        if not self.conv:
            raise ValueError("conv: at least one convolution layer")
        return self


class Seq2SeqConfig(_Section):
    """Translation: embedding -> bidirectional encoder -> attention -> decoder with input feeding."""

    family: Literal["seq2seq"] = "seq2seq"
    cell: Literal["gru", "lstm"] = "gru"
    embedding_size: int = Field(256, ge=1)
    hidden_size: int = Field(256, ge=1, description="decoder size; each encoder direction has half")
    layers: int = Field(1, ge=1, description="encoder layers")
    decoder_layers: int = Field(1, ge=1)
    attention: Literal["bahdanau", "luong"] = Field("bahdanau", description="additive (Bahdanau) or "
                                                    "general bilinear (Luong) scores")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    tie_weights: bool = Field(False, description="output layer shares the target embedding "
                              "(needs embedding_size == hidden_size)")

    @model_validator(mode="after")
    def _shapes(self) -> Seq2SeqConfig:
        if self.hidden_size % 2:
            raise ValueError("hidden_size must be even (each encoder direction has half)")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ValueError("tie_weights needs embedding_size == hidden_size")
        return self


class PruneConfig(_Section):
    method: Literal["dense", "narang", "agp", "oneshot", "small_dense", "distill"] = "dense"
    sparsity: float = Field(0.9, ge=0.0, lt=1.0)
    start: int | None = Field(None, ge=0, description="default: Table 1 of the paper, from the epochs")
    ramp: int | None = Field(None, ge=0)
    end: int | None = Field(None, ge=1)
    freq: int = Field(100, ge=1)
    at: int | None = Field(None, ge=1, description="oneshot: the step to prune at (default: start)")
    groups: tuple[str, ...] = ("recurrent", "linear")
    per_gate: bool = False
    block: tuple[int, int] = Field((1, 1), description="prune r x c blocks by their largest magnitude; "
                                   "(8, 1) runs fastest in the engine")
    exclude: tuple[str, ...] = Field((), description="parameter names left dense, shell patterns "
                                     "('attention_score.weight': a 1 x 256 matrix no 8x1 block tiles)")
    q_scope: Literal["tensor", "group"] = "tensor"
    q_from: Literal["start", "update"] = "update"
    match_nonzeros: int | None = Field(None, ge=1, description="small_dense/distill: size the dense "
                                       "model's hidden layer to about this many parameters")
    match_checkpoint: Path | None = Field(None, description="... or to the non-zeros of this checkpoint")
    teacher: Path | None = Field(None, description="distill: the teacher's checkpoint")
    temperature: float = Field(2.0, gt=0.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the distillation term")

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown groups {sorted(unknown)}; valid: {', '.join(GROUPS)}")
        if min(self.block) < 1:
            raise ValueError(f"block sizes must be at least 1, got {list(self.block)}")
        matching = self.match_nonzeros is not None or self.match_checkpoint is not None
        if self.match_nonzeros is not None and self.match_checkpoint is not None:
            raise ValueError("give match_nonzeros or match_checkpoint, not both")
        if self.method == "small_dense" and not matching:
            raise ValueError("small_dense needs match_nonzeros or match_checkpoint")
        if matching and self.method not in ("small_dense", "distill"):
            raise ValueError(f"match_* sizes small_dense and distill models, not {self.method}")
        if (self.method == "distill") != (self.teacher is not None):
            raise ValueError("teacher is required by, and only used by, method distill")
        return self


class TrainConfig(_Section):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(20.0, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    clip: float = Field(0.25, ge=0.0, description="gradient-norm clipping; 0 turns it off")
    epochs: int = Field(6, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    lr_decay: float = Field(0.25, gt=0.0, le=1.0, description="factor on a validation plateau")
    patience: int = Field(0, ge=0, description="evaluations without improvement before decay")
    anneal_from: int | None = Field(None, ge=1, description="from the end of this epoch on, lr *= lr_decay "
                                    "after every epoch instead of on plateaus (one schedule for all runs)")
    warmup: int = Field(0, ge=0, description="steps over which lr rises linearly to train.lr (0: from "
                        "the first step); they must end by the first evaluation")
    eval_every: int | None = Field(None, ge=1, description="steps; default once per epoch")
    log_every: int = Field(50, ge=1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="translation: on the target words")
    seed: int = 0


_FAMILY = {"text": "lm", "an4": "ds2", "manifest": "ds2", "librispeech": "ds2", "translation": "seq2seq"}


class RunConfig(_Section):
    data: Annotated[DataConfig | SpeechDataConfig | TranslationDataConfig, Field(discriminator="kind")]
    model: Annotated[ModelConfig | SpeechModelConfig | Seq2SeqConfig, Field(discriminator="family")]
    prune: PruneConfig = PruneConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _defaults_by_task(cls, raw: Any) -> Any:
        """``data.kind`` defaults to text and ``model.family`` to the one the data kind needs."""
        if not isinstance(raw, dict) or not isinstance(raw.get("data", {}), dict):
            return raw
        data = {"kind": "text", **raw.get("data", {})}
        model = raw.get("model", {})
        if isinstance(model, dict):
            model = {"family": _FAMILY.get(data["kind"], "lm"), **model}
        return {**raw, "data": data, "model": model}

    @model_validator(mode="after")
    def _family_fits_data(self) -> RunConfig:
        if _FAMILY[self.data.kind] != self.model.family:
            raise ValueError(f"model.family {self.model.family} does not fit data.kind {self.data.kind}")
        return self

    @property
    def speech(self) -> bool:
        return self.data.kind in SPEECH_DATA

    @property
    def translation(self) -> bool:
        return self.data.kind == "translation"


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[leaf] = _parse_value(value)
    return raw


def _format_errors(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        # Drop the union tags pydantic puts in the location ("data.an4.path" -> "data.path").
        parts = [str(part) for part in item["loc"]]
        if len(parts) > 1 and parts[0] in ("data", "model") and parts[1] in (*_FAMILY, *_FAMILY.values()):
            del parts[1]
        key = ".".join(parts) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        message = "unknown key" if item["type"] == "extra_forbidden" else message
        problems.append(f"{key}: {message}")
    return f"{source}: " + "; ".join(problems)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or start empty), apply overrides, validate."""
    raw: dict = {}
    source = "--set"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    raw = apply_overrides(raw, list(overrides))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def config_to_dict(config: RunConfig) -> dict:
    """Plain, YAML-safe data (paths as strings, tuples as lists)."""
    return config.model_dump(mode="json")


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
