"""`insight bench gpu`: refuses without CUDA in one line; `--device cpu --tiny` runs the
same code end to end on a toy size."""

from __future__ import annotations

import json

import pytest
import torch

from flows.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_without_cuda_the_gpu_benchmark_is_refused_in_one_line(capsys):
    assert main(["bench", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a CUDA GPU" in err and "--device cpu --tiny" in err and "\n" not in err


def test_the_full_size_on_the_cpu_is_refused(capsys):
    assert main(["bench", "gpu", "--device", "cpu"]) == 2
    assert "--tiny" in capsys.readouterr().err


def test_an_unknown_engine_is_refused(capsys, tmp_path):
    assert main(["bench", "gpu", "--device", "cpu", "--tiny", "--engines", "tgi",
                 "--out", str(tmp_path)]) == 2
    assert "hf and/or vllm" in capsys.readouterr().err


@pytest.mark.slow
def test_the_tiny_smoke_run_measures_every_figure(capsys, tmp_path):
    assert main(["bench", "gpu", "--device", "cpu", "--tiny", "--rounds", "1",
                 "--engines", "hf", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    hf = result["engines"]["hf"]
    assert result["model_parameters"] > 0 and result["k"] == 2
    assert set(hf["stage_seconds_per_round"]) == {"select", "rollout", "update_posterior",
                                                  "train", "evaluate", "commit"}
    assert hf["generated_tokens_per_s"] > 0 and hf["trained_completion_tokens_per_s"] > 0
    assert 0 < hf["outside_generation_and_update_share"] < 1
    assert hf["checkpoint_bytes"] > 0 and hf["checkpoint_seconds_per_round"] > 0
    # the policy was built at the configured vocabulary, in bf16
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["vocab_size"] == 512 and config["model_type"] == "qwen2"
    assert config.get("torch_dtype", config.get("dtype")) == "bfloat16"
