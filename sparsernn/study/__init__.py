"""Studies: train a list of runs, evaluate, export and time each, and write one report.

A study config (YAML) names a baseline and lists runs, each a training config file plus ``--set``
style overrides, in which ``{out}`` is the study directory and ``{run:NAME}`` the ``best.pt`` of an
earlier run (for sizing a small dense model or naming a teacher)::

    title: PTB language modelling
    baseline: dense
    runs:
      - {name: dense, config: configs/ptb-dense.yaml}
      - {name: narang90, config: configs/ptb-narang90.yaml}
      - {name: small-dense, config: configs/ptb-small-dense.yaml,
         set: ["prune.match_checkpoint={run:narang90}"]}

``sparsernn study CONFIG --out DIR`` trains the runs in order into ``DIR/runs/<name>`` (a finished run
is skipped, an interrupted one resumed), writes each run's measurements to ``result.json`` beside it
(``measure.py``), then the report (``report.py``). ``sparsernn report DIR`` rebuilds the report from
the finished runs without training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sparsernn.config import ConfigError, RunConfig, _format_errors, load_config
from sparsernn.errors import UserError
from sparsernn.study.claims import Claim


class TrainingFailed(UserError):
    """A run's training process failed; its log says why."""


class StudyRun(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    config: Path
    set: tuple[str, ...] = ()


class StudyLM(BaseModel):
    """Speech: a word n-gram LM fused into the test decoding, built from the training transcripts
    (``measure.py``); alpha and beta chosen beforehand with ``sparsernn lm tune`` on the validation
    split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    order: int = Field(3, ge=1)
    alpha: float = Field(ge=0.0)
    beta: float
    beams: tuple[int, ...] = Field((16,), min_length=1, description="beam widths decoded with the LM")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    baseline: str = Field(description="the dense run every other run is compared with")
    runs: tuple[StudyRun, ...] = Field(min_length=1)
    set: tuple[str, ...] = Field((), description="overrides for every run, before the run's own")
    speed_tokens: int = Field(500, ge=2, description="language models: test tokens streamed at batch 1")
    speed_utterances: int = Field(20, ge=1, description="speech: test utterances timed one at a time")
    speed_sentences: int = Field(100, ge=1, description="translation: test sentences translated one at "
                                 "a time")
    beam: int = Field(16, ge=0, description="speech: prefix beam width for the beam CER/WER; translation: "
                      "beam search width for the beam BLEU (0: off)")
    claims: tuple[Claim, ...] = Field((), description="claims the report computes verdicts for "
                                      "(sparsernn.study.claims)")
    lm: StudyLM | None = None

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        names = [run.name for run in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"run names must be unique: {names}")
        if self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not one of the runs {names}")
        for i, run in enumerate(self.runs):
            for reference in references(run):
                if reference not in names[:i]:
                    raise ValueError(f"run {run.name}: {{run:{reference}}} must name an earlier run")
        for claim in self.claims:
            unknown = [name for name in (*claim.runs, *claim.against) if name not in names]
            if unknown:
                raise ValueError(f"claim {claim.claim!r} names runs that are not in the study: {unknown}")
        return self


def load_study(path: str | Path) -> StudyConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read study config ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, str(path))) from None


def run_dir(out: Path, name: str) -> Path:
    return out / "runs" / name


def references(run: StudyRun) -> list[str]:
    """The earlier runs whose ``best.pt`` this run's overrides name."""
    return re.findall(r"\{run:([^}]*)\}", " ".join(run.set))


def setup(run: StudyRun, ignoring: tuple[str, ...] = ("train.seed=",)) -> tuple:
    """What a run trains apart from its seed (and the other overrides named in ``ignoring``): runs with
    equal setups are seeds of one another."""
    return str(run.config), tuple(item for item in run.set if not item.startswith(ignoring))


def overrides(study: StudyConfig, run: StudyRun, out: Path) -> list[str]:
    """The study's and then the run's ``--set`` items with ``{out}`` and ``{run:NAME}`` filled in."""
    def best(match: re.Match) -> str:
        return str(run_dir(out, match.group(1)) / "checkpoints" / "best.pt")

    return [re.sub(r"\{run:([^}]*)\}", best, item.replace("{out}", str(out)))
            for item in (*study.set, *run.set)]


def run_config(study: StudyConfig, run: StudyRun, out: Path) -> RunConfig:
    """A run's resolved training config: its file with the study's placeholders filled in."""
    return load_config(run.config, overrides(study, run, out))


def is_finished(directory: Path) -> bool:
    return (directory / "finished.json").exists()


def _train_in_turn(study: StudyConfig, out: Path) -> None:
    from sparsernn.train.loop import train

    for number, run in enumerate(study.runs, start=1):
        directory = run_dir(out, run.name)
        if is_finished(directory):
            print(f"[{number}/{len(study.runs)}] {run.name}: finished earlier, skipped", flush=True)
            continue
        resume = (directory / "checkpoints" / "last.pt").exists()
        print(f"[{number}/{len(study.runs)}] {run.name}: {'resuming' if resume else 'training'} "
              f"{run.config}", flush=True)
        record = train(run_config(study, run, out), directory, resume=resume)
        (directory / "finished.json").write_text(json.dumps(record) + "\n")


def _train_side_by_side(study: StudyConfig, out: Path, jobs: int) -> None:
    """``jobs`` runs at a time, each a ``sparsernn train`` process on its share of the cores (its log in
    ``train.log`` beside it); a run starts once the runs it names are finished. Stopped by Ctrl-C or a
    SIGTERM (a job scheduler's, ``kill``'s), it stops its runs too: left running, they would go on
    writing into directories the next ``sparsernn study`` resumes."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = [run for run in study.runs if not is_finished(run_dir(out, run.name))]
    for run in study.runs:
        if run not in pending:
            print(f"{run.name}: finished earlier, skipped", flush=True)
    running: dict[str, tuple[subprocess.Popen, object]] = {}
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            for run in [r for r in pending if all(is_finished(run_dir(out, d)) for d in references(r))]:
                if len(running) == jobs:
                    break
                directory = run_dir(out, run.name)
                directory.mkdir(parents=True, exist_ok=True)
                resume = (directory / "checkpoints" / "last.pt").exists()
                command = [sys.executable, "-m", "sparsernn", "train", str(run.config), "--out",
                           str(directory), *(f"--set={item}" for item in overrides(study, run, out)),
                           *(["--resume"] if resume else [])]
                log = (directory / "train.log").open("a")
                environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
                running[run.name] = (process, log)
                pending.remove(run)
                print(f"{run.name}: {'resuming' if resume else 'training'} {run.config} on {threads} "
                      f"thread(s), log in {directory / 'train.log'}", flush=True)
            if not running:
                raise ConfigError(f"runs {[r.name for r in pending]} wait for runs that cannot finish")
            time.sleep(1.0)
            for name, (process, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                directory = run_dir(out, name)
                if process.returncode != 0:
                    raise TrainingFailed(f"{name}: training failed (exit {process.returncode}); see "
                                         f"{directory / 'train.log'}")
                records = (directory / "metrics.jsonl").read_text().splitlines()
                last = next(json.loads(r) for r in reversed(records) if json.loads(r)["kind"] == "eval")
                (directory / "finished.json").write_text(json.dumps(last) + "\n")
                print(f"{name}: finished", flush=True)
    finally:
        for process, log in running.values():
            process.terminate()
            process.wait()
            log.close()
        signal.signal(signal.SIGTERM, previous)


def run_study(path: str | Path, out: str | Path, command: str, jobs: int = 1) -> Path:
    """Train, measure and report every run of the study at ``path`` into ``out``; returns report.md.

    ``jobs`` > 1 trains that many runs side by side in separate processes.
    """
    from sparsernn.study.measure import is_measured, measure_run
    from sparsernn.study.report import write_report

    study, out = load_study(path), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out / "study.yaml")
    (out / "command.txt").write_text(command + "\n")
    if jobs > 1:
        _train_side_by_side(study, out, jobs)
    else:
        _train_in_turn(study, out)
    for run in study.runs:
        if not is_measured(run_dir(out, run.name)):
            measure_run(study, run.name, run_config(study, run, out), out)
    return write_report(out)


def rebuild_report(out: str | Path) -> Path:
    """``sparsernn report DIR``: measure finished runs not yet measured, then write the report."""
    from sparsernn.study.measure import is_measured, measure_run
    from sparsernn.study.report import write_report

    out = Path(out)
    if not (out / "study.yaml").exists():
        raise ConfigError(f"{out}: no study.yaml; not a study directory")
    study = load_study(out / "study.yaml")
    for run in study.runs:
        directory = run_dir(out, run.name)
        if is_finished(directory) and not is_measured(directory):
            measure_run(study, run.name, run_config(study, run, out), out)
        elif not is_finished(directory):
            print(f"{run.name}: not finished; left out of the report", file=sys.stderr)
    return write_report(out)
