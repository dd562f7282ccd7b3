"""The trainer's command line and dataset: bad input names the flag (and so the job's field)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controllers.planners.engines import trainer_command
from crds.finetunejob import FineTuneJobSpec
from tests.kube import ROOT
from trainer.config import ConfigError, parse, parser
from trainer.data import DatasetError, read_records
from trainer.train import batch_indices

BASE = ["--base-model", "/models/tiny", "--dataset", "file:///data/d.jsonl", "--max-steps", "10"]


def test_file_uris_become_paths_and_other_schemes_are_refused() -> None:
    cfg = parse([*BASE, "--checkpoint-dir", "file:///ck/ns/job"])
    assert cfg.dataset == Path("/data/d.jsonl") and cfg.checkpoint_dir == Path("/ck/ns/job")
    assert cfg.adapter_dir == Path("/ck/ns/job/adapter")
    with pytest.raises(ConfigError, match="--dataset"):
        parse(["--base-model", "/m", "--dataset", "s3://bucket/d.jsonl", "--max-steps", "1", "--checkpoint-dir", "/c"])


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--method", "qlora"], "--method"),
        (["--world-size", "2"], "--world-size"),
        (["--lora-rank", "0"], "--lora-rank"),
    ],
)
def test_unsupported_settings_name_their_flag(extra: list[str], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        parse([*BASE, "--checkpoint-dir", "/c", *extra])


def test_the_shipped_dataset_reads(tmp_path: Path) -> None:
    assert len(read_records(ROOT / "trainer" / "data" / "tide-questions.jsonl")) >= 10
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2"):
        read_records(bad)
    with pytest.raises(DatasetError, match="cannot read"):
        read_records(tmp_path / "missing.jsonl")


def test_any_steps_batch_is_known_without_replay() -> None:
    a = [batch_indices(3, s, 16, 4) for s in range(8)]
    assert a == [batch_indices(3, s, 16, 4) for s in range(8)]
    assert sorted(i for s in range(4) for i in a[s]) == list(range(16))  # each epoch visits every example once


def test_the_controller_passes_exactly_flags_the_trainer_reads() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"name": "tiny", "source": "file:///models/tiny", "parametersB": 0.01},
            "dataset": {"uri": "file:///data/tide.jsonl"},
            "checkpoint": {"storage": "file:///ck", "intervalSteps": 5},
            "output": {"adapterName": "tide"},
        }
    )
    command, args = trainer_command(spec, "job", "ns", 0, 1)
    assert command == ["python", "-m", "trainer"]
    known = {a for action in parser()._actions for a in action.option_strings}
    assert {a for a in args if a.startswith("--")} <= known
    cfg = parse(args)
    assert (cfg.base_model, cfg.dataset) == (Path("/models/tiny"), Path("/data/tide.jsonl"))
    assert (cfg.checkpoint_dir, cfg.checkpoint_interval_steps, cfg.adapter_name) == (Path("/ck/ns/job"), 5, "tide")
    assert (cfg.checkpoint_interval_seconds, cfg.lora_rank, cfg.max_steps) == (600, 16, 1000)
