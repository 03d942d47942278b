"""Loading problems from local files: GSM8K, MATH, DAPO-Math-style rows and the like.

Real datasets differ in three ways this module absorbs, so none needs a conversion step:

- the file: ``.jsonl``, ``.json``, ``.csv``, ``.parquet``, or a directory written by
  ``datasets`` ``save_to_disk`` (its Arrow files are read directly: the ``datasets``
  package is not needed);
- where the fields are: a field name may be a dotted path into nested columns
  (DAPO-Math: ``reward_model.ground_truth``), and a prompt may be a list of chat
  messages (``[{"role": "user", "content": ...}]``), whose user turn is the prompt;
- how the answer is written: ``answer_format`` takes the text after GSM8K's ``####``
  or the last ``\\boxed{}`` of a MATH solution, so the record keeps the bare answer.

Rows without ids get stable ids from their content (``id_field=None``): the same
question and answer get the same id in every file and every run, so a question in both
the training and the held-out file is caught as a clash instead of silently leaking.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from insight.problems.datasets import VERIFIER_NAMES, Problem, validate_problems

__all__ = ["ANSWER_FORMATS", "load_problems", "extract_answer", "content_id"]

log = logging.getLogger("insight.data")

#: How a reference answer is written in its field (see :func:`extract_answer`).
ANSWER_FORMATS = ("plain", "gsm8k", "boxed")

_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?(-?\d+)\s*$", re.IGNORECASE)  # MATH: "Level 3"


def extract_answer(text: str, answer_format: str) -> str:
    """The reference answer in ``text``: as is (``plain``), the text after the last
    ``####`` with thousands separators removed (``gsm8k``: ``"... #### 1,234"`` ->
    ``"1234"``), or the content of the last ``\\boxed{...}`` (``boxed``, braces
    balanced: ``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``). Raises ValueError when the
    marker is missing, so a malformed row is named instead of graded against junk."""
    if answer_format == "plain":
        return text
    if answer_format == "gsm8k":
        if "####" not in text:
            raise ValueError("no '####' before the final answer (answer_format gsm8k)")
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    if answer_format == "boxed":
        start = max(text.rfind("\\boxed{"), text.rfind("\\boxed {"))
        if start < 0:
            raise ValueError("no \\boxed{...} answer (answer_format boxed)")
        i = text.index("{", start) + 1
        depth = 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j].strip()
        raise ValueError("unclosed \\boxed{ (answer_format boxed)")
    raise ValueError(f"unknown answer_format {answer_format!r} (known: {list(ANSWER_FORMATS)})")


def content_id(prompt: str, answer: str) -> str:
    """A stable id from what a problem says: ``q-`` and 16 hex digits of a SHA-256."""
    digest = hashlib.sha256(f"{prompt}\x1f{answer}".encode("utf-8")).hexdigest()
    return f"q-{digest[:16]}"


# ------------------------------------------------------------------------- reading


def _read_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if path.is_dir():
        return _read_saved_dataset(path, split)
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {lineno} is not valid JSON: {exc}") from None
        return rows
    if suffix == ".json":
        with path.open(encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if isinstance(data, dict):
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if len(lists) != 1:
                raise ValueError(
                    f"{path}: expected a JSON list of objects, or an object with exactly one "
                    f"list-valued key; found list keys {lists}"
                )
            data = data[lists[0]]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return data
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(
        f"{path}: unsupported format {suffix!r} (expected .jsonl, .json, .csv, .parquet or a "
        "save_to_disk directory)"
    )


def _read_saved_dataset(path: Path, split: str | None) -> list[dict[str, Any]]:
    """Rows of a directory written by ``datasets`` ``save_to_disk``, read with pyarrow
    (the ``datasets`` package is not needed): ``state.json`` names the Arrow stream
    files of a Dataset; a DatasetDict's ``dataset_dict.json`` names its splits, one
    subdirectory each."""
    import pyarrow as pa

    splits_file, state_file = path / "dataset_dict.json", path / "state.json"
    if splits_file.is_file():
        splits = json.loads(splits_file.read_text()).get("splits", [])
        if split is None:
            if len(splits) != 1:
                raise ValueError(f"{path} holds splits {splits}; point at one of them "
                                 f"(e.g. {path / splits[0]})" if splits else f"{path}: no splits")
            split = splits[0]
        if split not in splits:
            raise ValueError(f"{path} has no split {split!r}; has {splits}")
        return _read_saved_dataset(path / split, None)
    if not state_file.is_file():
        raise ValueError(f"{path} is a directory but not one written by save_to_disk "
                         "(no state.json or dataset_dict.json)")
    files = [path / f["filename"] for f in json.loads(state_file.read_text())["_data_files"]]
    tables = []
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        except (OSError, pa.ArrowInvalid) as exc:
            raise ValueError(f"{file}: not a readable Arrow file: {exc}") from None
    return pa.concat_tables(tables).to_pylist() if tables else []


# ---------------------------------------------------------------------------- fields


def _lookup(row: dict[str, Any], field: str) -> Any:
    """``row[field]``, or the value at a dotted path into nested columns; None if absent."""
    if field in row:
        return row[field]
    value: Any = row
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _field_str(row: dict[str, Any], field: str, where: str) -> str:
    value = _lookup(row, field)
    if value is None:
        raise ValueError(f"{where}: missing field {field!r} (row has {sorted(row)})")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(
            f"{where}: field {field!r} must be a string or number, got {type(value).__name__}"
        )
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if not text.strip():
        raise ValueError(f"{where}: field {field!r} is empty")
    return text


def _prompt_text(row: dict[str, Any], field: str, where: str) -> str:
    """The prompt: a string, or the one user turn of a list of chat messages (DAPO-Math
    stores ``[{"role": "user", "content": ...}]``). A system turn or several user turns
    are refused: the system prompt is ``data.system_prompt``, and multi-turn prompts are
    not supported."""
    value = _lookup(row, field)
    if value is None:
        raise ValueError(f"{where}: missing field {field!r}")
    if isinstance(value, list):
        roles = [m.get("role") if isinstance(m, dict) else None for m in value]
        if roles != ["user"] or not isinstance(value[0].get("content"), str):
            raise ValueError(
                f"{where}: field {field!r} holds chat messages with roles {roles}; only a "
                "single user turn is supported (set a system prompt with data.system_prompt)")
        value = value[0]["content"]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: field {field!r} is empty")
    return value


def _difficulty(row: dict[str, Any], field: str | None, where: str) -> int:
    """An integer level, or MATH's ``"Level 3"``; -1 when the field is absent or empty."""
    raw = None if field is None else _lookup(row, field)
    if raw is None or raw == "":
        return -1
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    match = _LEVEL_RE.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise ValueError(f"{where}: field {field!r} must be an integer or 'Level N', got {raw!r}")
    return int(match.group(1))


# --------------------------------------------------------------------------- loading


def load_problems(
    path: str | Path,
    *,
    id_field: str | None = "prompt_id",
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    answer_format: str = "plain",
    verifier: str = "math",
    source: str | None = None,
    difficulty_field: str | None = "difficulty",
    split: str | None = None,
) -> list[Problem]:
    """Load problems from ``.jsonl``, ``.json``, ``.csv``, ``.parquet`` or a ``save_to_disk`` dir.

    Field names may be dotted paths into nested columns. ``id_field=None`` gives each
    row a stable id from its prompt and answer (:func:`content_id`); rows repeating an
    earlier row exactly are then dropped, with a log line saying how many. The answer
    is taken from its field by ``answer_format`` (:func:`extract_answer`). A
    ``difficulty_field`` column is used when present (else -1). Per-row ``verifier``
    columns are not read: the whole file uses ``verifier``. Fails fast with a
    ValueError naming the path, row and field (missing field, empty value, duplicate
    id, bad answer).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"dataset path does not exist: {path}")
    if verifier not in VERIFIER_NAMES:
        raise ValueError(f"unknown verifier {verifier!r} (known: {list(VERIFIER_NAMES)})")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer_format {answer_format!r} (known: {list(ANSWER_FORMATS)})")
    src = str(path) if source is None else source
    problems: list[Problem] = []
    repeated = 0
    seen: set[str] = set()
    for i, row in enumerate(_read_rows(path, split)):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
        pid = None if id_field is None else _field_str(row, id_field, f"{path}: row {i}")
        where = f"{path}: row {i}" + ("" if pid is None else f" (id {pid!r})")
        prompt = _prompt_text(row, prompt_field, where)
        try:
            answer = extract_answer(_field_str(row, answer_field, where), answer_format)
        except ValueError as exc:
            raise ValueError(f"{where}: field {answer_field!r}: {exc}") from None
        if pid is None:
            pid = content_id(prompt, answer)
            if pid in seen:
                repeated += 1
                continue
            seen.add(pid)
        difficulty = _difficulty(row, difficulty_field, where)
        problems.append(Problem(pid, prompt, answer, src, difficulty, verifier))
    if not problems:
        raise ValueError(f"{path}: no rows")
    if repeated:
        log.warning("%s: dropped %d row(s) repeating an earlier row's prompt and answer",
                    path, repeated)
    try:
        validate_problems(problems)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return problems
