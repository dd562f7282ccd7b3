"""The training set: a JSONL file of {"prompt", "completion"} or {"text"} records, tokenised once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """The dataset cannot be read or holds no usable record."""


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids and the labels (-100 where the loss ignores the token, the prompt)."""

    input_ids: list[int]
    labels: list[int]


def read_records(path: Path) -> list[dict[str, str]]:
    """The records of a JSONL file; DatasetError names the line that is wrong."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{path}:{n}: not JSON: {exc}") from exc
        ok = isinstance(rec, dict) and (
            isinstance(rec.get("text"), str)
            or (isinstance(rec.get("prompt"), str) and isinstance(rec.get("completion"), str))
        )
        if not ok:
            raise DatasetError(f'{path}:{n}: expected {{"prompt", "completion"}} or {{"text"}} strings')
        records.append(rec)
    if not records:
        raise DatasetError(f"{path}: no records")
    return records


def tokenize(records: list[dict[str, str]], tokenizer: Any, max_length: int) -> list[Example]:
    """Prompt and completion as one sequence ending in EOS; only the completion's tokens are learnt."""
    examples = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for rec in records:
        if "text" in rec:
            prompt_ids: list[int] = []
            target_ids = list(tokenizer(rec["text"], add_special_tokens=False)["input_ids"]) + eos
        else:
            prompt_ids = list(tokenizer(rec["prompt"], add_special_tokens=False)["input_ids"])
            target_ids = list(tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]) + eos
        ids = (prompt_ids + target_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + target_ids)[:max_length]
        if any(label != -100 for label in labels):
            examples.append(Example(ids, labels))
    if not examples:
        raise DatasetError(f"no record leaves a token to learn within --max-length {max_length}")
    return examples
