"""scripts/bench_combine.py pools the per-run analyses of several comparison directories
under one label and measures each label against the `uniform` and `mopps` labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_runs(d: Path, seeds_to_rollouts: dict[int, float | None]) -> str:
    d.mkdir()
    runs = [{"seed": s, "rollouts_to_target": {"+0.025": r}, "rollouts_consumed": 6144,
             "rounds_to_target": {"+0.025": None if r is None else r / 128}, "rounds": 48,
             "auc": 0.31, "final_accuracy": 0.33, "zero_adv_share": 0.5}
            for s, r in seeds_to_rollouts.items()]
    (d / "results.json").write_text(json.dumps({"runs": runs}))
    return str(d)


def combine(*groups: str) -> str:
    out = subprocess.run([sys.executable, str(REPO / "scripts/bench_combine.py"), *groups],
                         capture_output=True, text=True, cwd=REPO, check=True)
    return out.stdout


def test_seeds_of_two_directories_pool_under_one_label_and_the_speedup_is_the_ratio(tmp_path):
    a = write_runs(tmp_path / "a", {0: 2000.0, 1: 3000.0})
    b = write_runs(tmp_path / "b", {2: 4000.0})
    u = write_runs(tmp_path / "u", {0: 6000.0, 1: 6000.0, 2: 6000.0})
    text = combine(f"variant={a},{b}", f"uniform={u}")
    row = next(line for line in text.splitlines() if line.startswith("| variant |")
               and "0,1,2" in line)
    assert "| 3,000 [" in row          # mean of 2,000, 3,000 and 4,000
    assert "| 2.00x [" in row          # 6,000 / 3,000
    assert "rollouts to +0.025 per seed [2000, 3000, 4000]" in text


def test_a_seed_that_missed_the_target_is_counted_at_its_budget_and_flagged(tmp_path):
    a = write_runs(tmp_path / "a", {0: 3000.0, 1: None})
    u = write_runs(tmp_path / "u", {0: 6000.0, 1: 6000.0})
    row = next(line for line in combine(f"variant={a}", f"uniform={u}").splitlines()
               if line.startswith("| variant | 0,1"))
    assert "4,572 [" in row and "(1 censored)" in row   # (3,000 + 6,144) / 2
