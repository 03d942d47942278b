"""Creating a run, reopening it, and refusing a resume that would mix two experiments.

A run directory holds one run: `insight.duckdb`, Parquet per round, policy checkpoints,
and (by default) the MLflow store. Its identity is the config (minus the number of
rounds and the tracking target) and the exact prompt set; resuming with either changed
would silently splice two experiments, so it is refused unless explicitly allowed.

Paths the record keeps to files inside the run directory (checkpoints) are stored
relative to it, so a copied or moved run reads its own files, never the original's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from insight.problems import datasets, local_data
from insight.config import (NOT_IDENTITY, ArithmeticData, CountdownData, LocalData,
                            PolicyConfig, RunConfig, config_from_dict)
from insight.record.layout import DB_NAME
from insight.record.runlock import training_lock
from insight.record.store import RunDamagedError, RunStore

EVAL_SPLIT_SEED_OFFSET = 7919  # held-out split drawn from a different stream than training


@dataclass(frozen=True)
class Run:
    """What every stage needs to find its inputs: where, which run, under which config."""

    run_dir: Path
    run_id: str
    config: RunConfig


def build_problems(cfg: RunConfig) -> tuple[list[datasets.Problem], list[datasets.Problem]]:
    """Training pool and held-out split, generated or loaded, validated."""
    data = cfg.data
    if isinstance(data, ArithmeticData):
        every = datasets.generate_arithmetic(
            data.n_train + data.n_eval, data.seed, min_digits=data.min_digits,
            max_digits=data.max_digits, ops=tuple(data.ops))
        train, held_out = datasets.train_eval_split(
            every, data.n_eval / (data.n_train + data.n_eval), data.seed + EVAL_SPLIT_SEED_OFFSET)
    elif isinstance(data, CountdownData):
        every = datasets.generate_countdown(data.n_train + data.n_eval, data.seed,
                                            n_numbers=data.n_numbers, max_number=data.max_number)
        train, held_out = datasets.train_eval_split(
            every, data.n_eval / (data.n_train + data.n_eval), data.seed + EVAL_SPLIT_SEED_OFFSET)
    elif isinstance(data, LocalData):
        kw = dict(id_field=data.id_field, prompt_field=data.prompt_field,
                  answer_field=data.answer_field, answer_format=data.answer_format,
                  difficulty_field=data.difficulty_field, verifier=data.verifier)
        train = local_data.load_problems(data.train_path, **kw)
        held_out = local_data.load_problems(data.eval_path, **kw)
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown data config {type(data).__name__}")
    datasets.validate_problems(train)
    datasets.validate_problems(held_out)
    clash = {p.prompt_id for p in train} & {p.prompt_id for p in held_out}
    if clash:
        raise ValueError(f"prompt ids in both training and held-out data: {sorted(clash)[:5]}")
    return train, held_out


def data_hash(train, held_out) -> str:
    h = hashlib.sha256()
    for split, problems in (("train", train), ("eval", held_out)):
        for p in problems:
            h.update(f"{split}\x1f{p.prompt_id}\x1f{p.prompt}\x1f{p.answer}\x1e".encode())
            if p.rendered is not None:  # a changed template or tokenizer changes the run
                h.update(f"rendered\x1f{p.rendered}\x1e".encode())
    return h.hexdigest()[:16]


def check_policy_path(cfg: RunConfig) -> Path:
    path = cfg.resolved_policy_path()
    if not path.is_dir():
        embedded = cfg.policy.path == PolicyConfig().path
        hint = (" (rebuild the embedded one with `python -m flows.cli_bootstrap --out "
                "checkpoints/tiny-arith`)" if embedded else
                " (set it with --set policy.path=/local/model/dir)")
        raise FileNotFoundError(f"policy.path does not exist or is not a directory: {path}"
                                + hint)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"policy.path has no config.json (not a model directory): {path}")
    return path


def check_config(cfg: RunConfig) -> tuple[list[datasets.Problem], list[datasets.Problem]]:
    """Validate what a config points at, before any run directory is touched: the policy
    path, the rollout engine, the dataset rows, a batch the pool can fill. Returns the
    (train, held-out) problems."""
    check_policy_path(cfg)
    if cfg.policy.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        # Never a silent fallback to the HF sampler: the user asked for vLLM's throughput.
        raise ValueError("policy.engine is 'vllm' but vLLM is not installed: install the "
                         "GPU extra (pip install 'insight-rlvr[gpu]') or set policy.engine: hf")
    if cfg.orchestration.task_runner == "ray" and importlib.util.find_spec("prefect_ray") is None:
        raise ValueError("orchestration.task_runner is 'ray' but prefect-ray is not installed: "
                         "install the ray extra (pip install 'insight-rlvr[ray]') or set "
                         "orchestration.task_runner: local")
    train, held_out = render_prompts(cfg, *build_problems(cfg))
    if cfg.rollout.batch_size > len(train):
        # Selection would quietly take the whole pool every round: not the experiment asked for.
        raise ValueError(f"rollout.batch_size {cfg.rollout.batch_size} is larger than the "
                         f"training pool of {len(train)} prompts")
    return train, held_out


def render_prompts(cfg: RunConfig, train, held_out):
    """The problems with what the policy is given (`Problem.rendered`), rendered once
    with the policy's tokenizer and checked against the prompt-length limit
    (insight.policy.prompts)."""
    from insight.policy import model as policy_model, prompts

    path = cfg.resolved_policy_path()
    fmt = prompts.PromptFormat(cfg.policy.chat_template, cfg.data.system_prompt,
                               cfg.data.instruction)
    limit = prompts.prompt_limit(path, cfg.rollout.max_prompt_tokens,
                                 cfg.rollout.max_new_tokens)
    tokenizer = policy_model.load_tokenizer(path)
    out = []
    for split, problems in (("train", train), ("eval", held_out)):
        kept = prompts.render_problems(tokenizer, problems, fmt, limit=limit,
                                       on_long=cfg.rollout.on_long_prompt, split=split)
        if not kept:
            raise ValueError(f"every {split} prompt is longer than the {limit}-token limit "
                             "(rollout.max_prompt_tokens)")
        out.append(kept)
    return tuple(out)


def open_or_create_run(run_dir: str | Path, cfg: RunConfig, *, allow_changed: bool = False,
                       problems: tuple[list, list] | None = None) -> Run:
    """Reopen the run in `run_dir`, or create it. Everything is validated before any
    training: config, policy path, dataset rows, the checkpoint a resume starts from.
    The run lock is held throughout, so a run another process is training is refused
    before its stored config is touched. `problems`: what `check_config(cfg)` returned,
    when the caller has already checked `cfg` (so the data is not loaded twice)."""
    run_dir = Path(run_dir).resolve()
    train, held_out = problems if problems is not None else check_config(cfg)
    dh = data_hash(train, held_out)
    with training_lock(run_dir), RunStore(run_dir) as db:
        existing = db.get_run()
        if existing is not None:
            _check_same_experiment(existing, cfg, dh, allow_changed)
            check_resume_checkpoint(db, run_dir, existing["run_id"])
            if allow_changed:
                cfg_old = config_from_dict(json.loads(existing["config_json"]))
                # The stored config stays the record of how earlier rounds were made;
                # the new one governs the rounds to come.
                if cfg_old != cfg:
                    db.replace_run_identity(cfg.model_dump_json(), cfg.identity_hash(), dh)
            else:
                db.update_run_config(cfg.model_dump_json())
            return Run(run_dir, existing["run_id"], cfg)
        run_id = f"{cfg.name}-{uuid.uuid4().hex[:8]}"
        with db.transaction():
            db.create_run(run_id, config_json=cfg.model_dump_json(),
                          config_hash=cfg.identity_hash(), data_hash=dh, seed=cfg.seed,
                          selector=cfg.selector.type)
            db.insert("prompts", _prompt_rows(run_id, train, "train"))
            db.insert("prompts", _prompt_rows(run_id, held_out, "eval"))
        db.export_run_tables(run_id)
    return Run(run_dir, run_id, cfg)


def check_run_dir(run_dir: str | Path) -> Path:
    """The resolved directory, if it holds a run database; one clear error otherwise."""
    run_dir = Path(run_dir).resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"not a run directory (it is a file): {run_dir}")
    if not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"no run in {run_dir} (start one with `insight train`)")
    return run_dir


def load_run(run_dir: str | Path) -> Run:
    """Reopen an existing run with its stored config (used by every stage). Reading
    never creates: a path without a run database is refused before DuckDB would make one."""
    run_dir = check_run_dir(run_dir)
    with RunStore(run_dir) as db:
        row = db.get_run()
    if row is None:
        raise FileNotFoundError(f"no run in {run_dir} (start one with `insight train`)")
    return Run(run_dir, row["run_id"], config_from_dict(json.loads(row["config_json"])))


def path_in_run(run_dir: Path, stored: str) -> Path:
    """A path as the record keeps it: relative to the run directory, or absolute (runs
    recorded before paths were kept relative, and policies outside the run)."""
    path = Path(stored)
    return path if path.is_absolute() else run_dir / path


def path_for_record(run_dir: Path, path: Path) -> str:
    """How the record keeps `path`: relative when inside the run directory, so the run
    stays valid when copied or moved; as given otherwise."""
    try:
        return Path(path).relative_to(run_dir).as_posix()
    except ValueError:
        return str(path)


def check_resume_checkpoint(db: RunStore, run_dir: Path, run_id: str) -> None:
    """A run continues from the policy of its last committed round; without it the
    next round would fail after writing a half round, so refuse before anything."""
    last = db.last_committed_round(run_id)
    if last == 0:
        return  # policy(0) is the configured one, checked by check_policy_path
    stored = db.round_row(run_id, last)["checkpoint"]
    path = path_in_run(run_dir, stored) if stored else None
    if path is None or not (path / "config.json").is_file():
        raise RunDamagedError(
            f"the policy checkpoint of round {last} (the last committed round, which the "
            f"run continues from) is missing: {path or '(not recorded)'}")


def _check_same_experiment(existing: dict, cfg: RunConfig, dh: str, allow: bool) -> None:
    changes = []
    # The stored config read under today's schema: a field added since the run was
    # created takes its default on both sides, so it is no change (its stored hash would
    # differ, being computed without the field).
    old = config_from_dict(json.loads(existing["config_json"]))
    if old.identity_hash() != cfg.identity_hash():
        changes += _diff(old.model_dump(mode="json", exclude=NOT_IDENTITY),
                         cfg.model_dump(mode="json", exclude=NOT_IDENTITY))
    if existing["data_hash"] != dh:
        changes.append(f"dataset contents (hash {existing['data_hash']} -> {dh})")
    if changes and not allow:
        raise ValueError("refusing to resume run {} with a changed setup:\n  {}\n"
                         "pass --allow-changed to continue anyway".format(
                             existing["run_id"], "\n  ".join(changes)))


def _diff(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def _prompt_rows(run_id: str, problems, split: str) -> pa.Table:
    return pa.table({
        "run_id": [run_id] * len(problems),
        "prompt_id": [p.prompt_id for p in problems],
        "split": [split] * len(problems),
        "source": [p.source for p in problems],
        "prompt": [p.prompt for p in problems],
        "answer": [p.answer for p in problems],
        "difficulty": pa.array([p.difficulty for p in problems], pa.int32()),
        "verifier": [p.verifier for p in problems],
        "rendered": pa.array([p.rendered for p in problems], pa.string()),
    })


def load_problems_of(run: Run, split: str, db: RunStore | None = None) -> list[datasets.Problem]:
    """The run's prompts of one split (in an open store, or opening one)."""
    if db is None:
        with RunStore(run.run_dir) as db:
            return load_problems_of(run, split, db)
    t = db.prompt_rows(run.run_id, split)
    return [datasets.Problem(**row) for row in t.to_pylist()]


SELECT, GENERATE, EVALUATE, TRAIN = 1, 2, 3, 4  # the seed streams of a round's stages


def stage_seed(run_seed: int, round_: int, stream: int) -> int:
    """Seeds derive from (run seed, round, stream) only, so a resumed run draws exactly
    what an uninterrupted one would have drawn."""
    return int(np.random.SeedSequence([run_seed, round_, stream]).generate_state(1)[0])


def prompt_seed(run_seed: int, round_: int, prompt_id: str) -> int:
    """The seed of one prompt's rollouts in a round: from (run seed, round, prompt id)
    only, so its completions are the same whichever prompts share its generation batch,
    chunk, shard or worker (a sharded run equals the single-process run)."""
    digest = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big")
    return int(np.random.SeedSequence([run_seed, round_, GENERATE, digest])
               .generate_state(1, np.uint64)[0])
