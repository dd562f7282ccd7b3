"""The trainer's command line and dataset: bad input names the flag (and so the job's field)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kube import ROOT
from trainer.config import ConfigError, parse
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
