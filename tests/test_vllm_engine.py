"""The vLLM engine adapter, checked against the API of the vLLM release we pin.

vLLM cannot run here (no GPU), so a stand-in module named `vllm` is put in sys.modules.
Its classes have exactly the signatures of vLLM 0.32.0 (read from its wheel: see
insight/policy/vllm_engine.py) for everything the adapter calls, so a renamed or
misplaced argument fails here as it would on a GPU. It records every call.
"""

from __future__ import annotations

import importlib.machinery
import json
import socket
import sys
import types
from pathlib import Path

import pytest

from insight.config import config_from_dict
from insight.record.run import open_or_create_run
from insight.record.store import RunStore
from tests.test_e2e import tiny_config

# EngineArgs fields (vllm/engine/arg_utils.py, 0.32.0) the adapter may pass as **kwargs.
ENGINE_ARGS_FIELDS = {"max_model_len", "enable_sleep_mode", "dtype", "enforce_eager"}


def make_fake_vllm(calls: list, *, reload_seconds: float = 0.0) -> types.ModuleType:
    """A `vllm` module whose LLM, SamplingParams and worker have 0.32.0's signatures."""
    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec finds it

    class SamplingParams:  # a msgspec struct in vLLM: keyword fields only
        def __init__(self, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int | None = None, max_tokens: int | None = 16,
                     stop_token_ids: list[int] | None = None, detokenize: bool = True,
                     skip_special_tokens: bool = True):
            self.n, self.temperature, self.top_p, self.seed = n, temperature, top_p, seed
            self.max_tokens, self.stop_token_ids = max_tokens, stop_token_ids

    class Worker:  # vllm/v1/worker/gpu_worker.py -> GPUModelRunner.reload_weights
        def reload_weights(self, weights_iterator=None, weights_path: str | None = None,
                           is_checkpoint_format: bool = True) -> None:
            if reload_seconds:
                raise TimeoutError("RPC call to reload_weights timed out.")
            assert Path(weights_path, "config.json").is_file()
            calls.append(("reload_weights", weights_path))

    class LLM:
        def __init__(self, model: str, *, runner="auto", convert="auto", tokenizer=None,
                     tokenizer_mode="auto", skip_tokenizer_init=False,
                     trust_remote_code=False, tensor_parallel_size=1, dtype="auto",
                     quantization=None, revision=None, seed: int = 0,
                     gpu_memory_utilization: float = 0.92, cpu_offload_gb: float = 0,
                     enforce_eager: bool = False, **kwargs):
            assert set(kwargs) <= ENGINE_ARGS_FIELDS, f"not EngineArgs fields: {kwargs}"
            import os
            calls.append(("LLM", dict(model=model, seed=seed,
                                      gpu_memory_utilization=gpu_memory_utilization,
                                      offline=os.environ.get("HF_HUB_OFFLINE"), **kwargs)))
            self.worker = Worker()

        def generate(self, prompts, sampling_params=None, *, use_tqdm=True,
                     lora_request=None, priority=None, tokenization_kwargs=None,
                     mm_processor_kwargs=None):
            # vLLM takes one SamplingParams for all prompts or a sequence, one per prompt.
            per_prompt = (list(sampling_params) if isinstance(sampling_params, (list, tuple))
                          else [sampling_params] * len(prompts))
            assert len(per_prompt) == len(prompts), "one SamplingParams per prompt"
            p = per_prompt[0] if per_prompt else sampling_params
            calls.append(("generate", len(prompts), p.n, p.seed))
            outs = []
            for prompt, p in zip(prompts, per_prompt):
                ids = prompt["prompt_token_ids"]
                done = p.max_tokens >= 2
                token_ids = [ids[-1], p.stop_token_ids[0]] if done else [ids[-1]]
                outs.append(types.SimpleNamespace(outputs=[
                    types.SimpleNamespace(index=j, text="", token_ids=token_ids,
                                          cumulative_logprob=None, logprobs=None,
                                          finish_reason="stop" if done else "length")
                    for j in range(p.n)]))
            return outs

        def collective_rpc(self, method, timeout: float | None = None, args: tuple = (),
                           kwargs: dict | None = None) -> list:
            calls.append(("collective_rpc", method, timeout))
            return [getattr(self.worker, method)(*args, **(kwargs or {}))]

        def sleep(self, level: int = 1, mode: str = "abort"):
            calls.append(("sleep", level))

        def wake_up(self, tags: list[str] | None = None) -> bool:
            calls.append(("wake_up", tuple(tags or ())))
            return True

        def reset_prefix_cache(self, reset_running_requests: bool = False,
                               reset_connector: bool = False) -> bool:
            calls.append(("reset_prefix_cache",))
            return True

    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    return vllm


@pytest.fixture
def fake_vllm(monkeypatch):
    from insight import stages
    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", make_fake_vllm(calls))
    monkeypatch.setattr(stages, "_VLLM_ENGINE", {})
    return calls


def vllm_run(tiny_policy_dir, tmp_path, **vllm_opts):
    cfg = config_from_dict(tiny_config(
        tiny_policy_dir, rounds=2, eval={"every": 1, "n_samples": 1},
        policy={"engine": "vllm", "vllm": {"gpu_memory_utilization": 0.4, **vllm_opts}}))
    return open_or_create_run(tmp_path / "run", cfg)


def run_rounds(run, last: int):
    from insight import stages
    stages.initial_round(run)
    for r in range(1, last + 1):
        with RunStore(run.run_dir) as db:
            db.start_round(run.run_id, r, None)
        for stage in (stages.select, stages.rollout, stages.update_posterior, stages.train,
                      stages.evaluate, stages.commit):
            stage(run, r)


def test_one_engine_is_built_and_each_rounds_weights_are_loaded_in_place(
        fake_vllm, tiny_policy_dir, tmp_path):
    run = vllm_run(tiny_policy_dir, tmp_path, max_model_len=64)
    run_rounds(run, 2)
    built = [c for c in fake_vllm if c[0] == "LLM"]
    assert len(built) == 1
    assert built[0][1] == dict(model=str(Path(tiny_policy_dir).resolve()), seed=run.config.seed,
                               gpu_memory_utilization=0.4, offline="1", max_model_len=64,
                               enable_sleep_mode=True)
    ckpt = [str((run.run_dir / f"checkpoints/round_{r:05d}").resolve()) for r in (1, 2)]
    assert [c[1] for c in fake_vllm if c[0] == "reload_weights"] == ckpt
    assert [c for c in fake_vllm if c[0] == "collective_rpc"] == [
        ("collective_rpc", "reload_weights", 600.0)] * 2
    # Around each update: asleep (weights and KV cache freed), then woken into the new
    # weights: weights memory first, the reload, the KV cache, a fresh prefix cache.
    events = [c[0] if c[0] != "wake_up" else c for c in fake_vllm
              if c[0] in ("sleep", "wake_up", "reload_weights", "reset_prefix_cache",
                          "generate")]
    once = ["sleep", ("wake_up", ("weights",)), "reload_weights", ("wake_up", ("kv_cache",)),
            "reset_prefix_cache"]
    assert events == (["generate"] * 2 + ["generate"] + once + ["generate"] * 2
                      + ["generate"] + once + ["generate"] * 2)
    assert [c for c in fake_vllm if c[0] == "sleep"] == [("sleep", 2)] * 2
    with RunStore(run.run_dir) as db:
        assert db.round_row(run.run_id, 2)["status"] == "committed"


def test_without_sleep_mode_weights_are_reloaded_while_awake(fake_vllm, tiny_policy_dir,
                                                             tmp_path):
    run = vllm_run(tiny_policy_dir, tmp_path, enable_sleep_mode=False)
    run_rounds(run, 1)
    assert not [c for c in fake_vllm if c[0] in ("sleep", "wake_up")]
    assert [c[0] for c in fake_vllm if c[0] == "reload_weights"] == ["reload_weights"]
    assert [c for c in fake_vllm if c[0] == "LLM"][0][1]["enable_sleep_mode"] is False


def test_a_reload_past_its_timeout_fails_the_stage_and_drops_the_engine(
        monkeypatch, tiny_policy_dir, tmp_path):
    from insight import stages
    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", make_fake_vllm(calls, reload_seconds=5))
    monkeypatch.setattr(stages, "_VLLM_ENGINE", {})
    run = vllm_run(tiny_policy_dir, tmp_path, weight_sync_timeout_s=0.5)
    stages.initial_round(run)
    with RunStore(run.run_dir) as db:
        db.start_round(run.run_id, 1, None)
    for stage in (stages.select, stages.rollout, stages.update_posterior, stages.train):
        stage(run, 1)
    with pytest.raises(TimeoutError, match=r"within 0\.5 s \(policy.vllm.weight_sync_timeout_s\)"):
        stages.evaluate(run, 1)
    assert ("collective_rpc", "reload_weights", 0.5) in calls
    assert stages._VLLM_ENGINE == {}  # half-loaded weights are never used
    with RunStore(run.run_dir) as db:
        assert db.round_row(run.run_id, 1)["status"] != "committed"


def test_without_vllm_the_engine_is_refused_in_one_line_naming_vllm(monkeypatch,
                                                                   tiny_policy_dir):
    from insight.policy.vllm_engine import VLLMEngine, VLLMUnavailable
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(VLLMUnavailable) as err:
        VLLMEngine(tiny_policy_dir)
    assert "vLLM" in str(err.value) and "\n" not in str(err.value)
    assert "0.32.0" in str(err.value)


def test_a_vllm_that_cannot_start_is_reported_as_vllm_unusable(monkeypatch, tiny_policy_dir):
    from insight.policy.vllm_engine import VLLMEngine, VLLMUnavailable
    vllm = make_fake_vllm([])

    def no_gpu(*args, **kwargs):
        raise RuntimeError("Failed to infer device type")
    vllm.LLM = no_gpu
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    with pytest.raises(VLLMUnavailable, match="vLLM could not start on .*Failed to infer"):
        VLLMEngine(tiny_policy_dir)


def test_the_engine_reads_nothing_from_the_network(monkeypatch, fake_vllm, tiny_policy_dir,
                                                   tmp_path):
    from insight.policy.vllm_engine import VLLMEngine

    def no_network(*args, **kwargs):
        raise AssertionError("the vLLM engine opened a network connection")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    engine = VLLMEngine(tiny_policy_dir, enable_sleep_mode=False)
    groups = engine.generate(["1+2=", "3+4="], 3, temperature=0.7, max_new_tokens=4, seed=9)
    assert [len(g) for g in groups] == [3, 3]
    assert fake_vllm[0][1]["offline"] == "1"  # vLLM's own processes will not reach the Hub
    assert Path(fake_vllm[0][1]["model"]).is_dir()  # a local directory, never a Hub id


def test_rollouts_carry_the_sampled_ids_and_the_stop_reason(fake_vllm, tiny_policy_dir):
    from insight.policy.model import load_tokenizer
    from insight.policy.vllm_engine import VLLMEngine
    tok = load_tokenizer(tiny_policy_dir)
    engine = VLLMEngine(tiny_policy_dir, enable_sleep_mode=False)
    ended = engine.generate(["1+2="], 2, max_new_tokens=4, seed=1)[0]
    assert ended[0].completion_token_ids[-1] == tok.eos_token_id and not ended[0].truncated
    assert ended[0].completion == "="  # the fake echoes the prompt's last token, then EOS
    cut = engine.generate(["1+2="], 1, max_new_tokens=1, seed=1)[0][0]
    assert cut.truncated and cut.completion == "="
    assert ("generate", 1, 2, 1) in fake_vllm  # one request of n = k, seeded


def test_generating_while_asleep_is_refused(fake_vllm, tiny_policy_dir):
    from insight.policy.vllm_engine import VLLMEngine
    engine = VLLMEngine(tiny_policy_dir)
    engine.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(["1+2="], 1)
    engine.load(tiny_policy_dir)  # the same weights: still reloaded, they were freed
    path = str(Path(tiny_policy_dir).resolve())
    assert fake_vllm[-5:] == [("wake_up", ("weights",)),
                              ("collective_rpc", "reload_weights", 600.0),
                              ("reload_weights", path), ("wake_up", ("kv_cache",)),
                              ("reset_prefix_cache",)]
    assert engine.generate(["1+2="], 1)


def test_vllm_options_are_validated():
    from insight.config import ConfigError
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        config_from_dict({"policy": {"vllm": {"gpu_memory_utilization": 1.5}}})
    with pytest.raises(ConfigError, match="policy.vllm.swap"):
        config_from_dict({"policy": {"vllm": {"swap": 4}}})
    assert json.loads(config_from_dict({}).model_dump_json())["policy"]["vllm"][
        "enable_sleep_mode"] is True
