"""`insight bench gpu`: where the time and memory of a round go, on one GPU, at a real size.

Why random weights: the benchmark must run where nothing can be downloaded, and a round's
cost depends on the architecture and the sizes, not on what the weights know. It builds a
Qwen2.5-0.5B-shaped model (24 layers, hidden 896, Qwen's 151,936-token vocabulary, bf16;
about 494M parameters) with a character tokenizer padded to that vocabulary, and runs 3
rounds through the real stage functions (select, rollout, posterior, train, evaluate,
commit; no Prefect, no MLflow) with B = 64 prompts, k = 8 and 256-token completions.

A random model solves nothing, so every group would have zero advantage and the update
would skip every sequence. The benchmark therefore sets a small KL term (`kl_coef`
0.001): the update then forwards and backpropagates every sequence (and forwards the
reference model), the cost a learning run pays.

The last line printed is one JSON object per engine: seconds per stage, generated and
trained tokens per second, peak GPU memory, checkpoint bytes and seconds, and the share
of a round spent outside generation and the update. `--device cpu --tiny` runs the same
code on a toy size (a smoke test, no meaningful figures).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

QWEN2_HALF_B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, vocab_size=151_936,
                    max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                    tie_word_embeddings=True)
TINY_MODEL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                  max_position_embeddings=256, rope_theta=10_000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)
FULL_RUN = dict(batch_size=64, k=8, max_new_tokens=256, n_train=512, n_eval=32,
                micro_batch_size=32)
TINY_RUN = dict(batch_size=4, k=2, max_new_tokens=8, n_train=16, n_eval=4, micro_batch_size=8)
ROUND_STAGES = ("select", "rollout", "update_posterior", "train", "evaluate", "commit")


def add_bench_gpu_arguments(p) -> None:
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (the benchmark); cpu only with --tiny (a smoke run)")
    p.add_argument("--tiny", action="store_true",
                   help="toy model and batch: checks the command, measures nothing useful")
    p.add_argument("--engines", default="auto",
                   help="comma list of hf,vllm; auto = hf, and vllm where it is installed")
    p.add_argument("--rounds", type=int, default=3, help="training rounds per engine")
    p.add_argument("--out", default=None,
                   help="working directory (model, runs); default: a new temporary one")


def run_bench_gpu(*, device: str = "cuda", tiny: bool = False, engines: str = "auto",
                  rounds: int = 3, out: str | None = None, log=print) -> dict:
    """Build the model, run `rounds` rounds per engine, return the figures."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("insight bench gpu needs a CUDA GPU and torch sees none; "
                         "for a CPU smoke run of the same code use --device cpu --tiny")
    if device == "cpu" and not tiny:
        raise ValueError("a 0.5B-parameter model on the CPU would take hours: "
                         "add --tiny for a smoke run, or run on a GPU")
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    names = _engines(engines)
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="insight-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir, n_params = build_bench_policy(work / "model", TINY_MODEL if tiny else QWEN2_HALF_B,
                                             device=device)
    result = {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
              "model_parameters": n_params, "build_seconds": round(time.perf_counter() - t0, 2),
              **(TINY_RUN if tiny else FULL_RUN), "rounds": rounds, "engines": {}}
    for name in names:
        log(f"bench gpu: {name} engine, {rounds} rounds")
        result["engines"][name] = run_engine(name, model_dir, work / f"run-{name}",
                                             device=device, tiny=tiny, rounds=rounds)
    return result


def _engines(spec: str) -> list[str]:
    if spec == "auto":
        return ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in ("hf", "vllm")]
    if bad or not names:
        raise ValueError(f"--engines takes hf and/or vllm, got {spec!r}")
    return names


def build_bench_policy(path: Path, size: dict, *, device: str) -> tuple[Path, int]:
    """A random-weight Qwen2 causal LM in bf16 and a character tokenizer whose vocabulary
    is padded (with unused code points) to the model's, saved to `path`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from insight.policy.model import build_char_tokenizer, default_alphabet, save_policy

    size = dict(size)
    vocab = size.pop("vocab_size")
    alphabet = default_alphabet()
    n_special = len(build_char_tokenizer(alphabet))
    filler = "".join(chr(0x10000 + i) for i in range(vocab - n_special))
    tok = build_char_tokenizer(alphabet + filler)
    tok.model_max_length = size["max_position_embeddings"]
    config = Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         torch_dtype="bfloat16", **size)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    save_policy(model, tok, path)
    n = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return path, n


def bench_config(model_dir: Path, *, engine: str, device: str, tiny: bool, rounds: int) -> dict:
    run = TINY_RUN if tiny else FULL_RUN
    return {
        "name": f"bench-gpu-{engine}", "seed": 0, "rounds": rounds,
        "policy": {"path": str(model_dir), "device": device, "engine": engine,
                   "vllm": {"gpu_memory_utilization": 0.4, "max_model_len": 512}},
        "data": {"type": "arithmetic", "n_train": run["n_train"], "n_eval": run["n_eval"],
                 "min_digits": 1, "max_digits": 2},
        "rollout": {"k": run["k"], "batch_size": run["batch_size"],
                    "max_new_tokens": run["max_new_tokens"]},
        "selector": {"type": "insight"},
        "train": {"micro_batch_size": run["micro_batch_size"], "lr": 1e-6, "kl_coef": 0.001},
        "eval": {"every": rounds, "n_samples": 1, "greedy": False},
        "tracking": {"enabled": False},
    }


class _Meter:
    """Seconds and tokens spent inside generation and inside the policy update."""

    def __init__(self, sync):
        self.sync = sync
        self.generate_s = self.update_s = self.checkpoint_s = 0.0
        self.generated_tokens = 0

    @contextmanager
    def timing(self, field: str):
        self.sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            setattr(self, field, getattr(self, field) + time.perf_counter() - t)


class _TimedEngine:
    def __init__(self, engine, meter: _Meter):
        self.engine, self.meter = engine, meter

    def generate(self, prompts, k, **kwargs):
        with self.meter.timing("generate_s"):
            groups = self.engine.generate(prompts, k, **kwargs)
        self.meter.generated_tokens += sum(len(r.completion_token_ids) for g in groups for r in g)
        return groups


@contextmanager
def _instrumented(meter: _Meter):
    """Time generation, the update and the checkpoint write inside the real stages by
    wrapping the three functions they call (restored afterwards): the stages themselves
    run unchanged."""
    from insight import stages

    saved = {"rollout_engine": stages.rollout_engine,
             "policy_update": stages.grpo.policy_update,
             "save_trainer_state": stages.grpo.save_trainer_state}

    def rollout_engine(*args, **kwargs):
        return _TimedEngine(saved["rollout_engine"](*args, **kwargs), meter)

    def timed(name, field):
        def call(*args, **kwargs):
            with meter.timing(field):
                return saved[name](*args, **kwargs)
        return call

    stages.rollout_engine = rollout_engine
    stages.grpo.policy_update = timed("policy_update", "update_s")
    stages.grpo.save_trainer_state = timed("save_trainer_state", "checkpoint_s")
    try:
        yield
    finally:
        stages.rollout_engine = saved["rollout_engine"]
        stages.grpo.policy_update = saved["policy_update"]
        stages.grpo.save_trainer_state = saved["save_trainer_state"]


def run_engine(engine: str, model_dir: Path, run_dir: Path, *, device: str, tiny: bool,
               rounds: int) -> dict:
    """`rounds` rounds with one engine through the real stage functions; its figures."""
    import torch

    from insight import stages
    from insight.config import config_from_dict
    from insight.record.run import open_or_create_run
    from insight.record.store import RunStore

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    stages._POLICY_CACHE.clear()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run = open_or_create_run(run_dir, config_from_dict(bench_config(
        model_dir, engine=engine, device=device, tiny=tiny, rounds=rounds)))
    meter = _Meter(sync)
    seconds = {s: 0.0 for s in ROUND_STAGES}
    device_used_max = 0
    trained_tokens = 0
    ckpt_bytes = []
    with _instrumented(meter):
        t = time.perf_counter()
        stages.initial_round(run)  # builds the engine, evaluates round 0
        setup_s = time.perf_counter() - t
        meter.generate_s = meter.update_s = meter.checkpoint_s = 0.0
        meter.generated_tokens = 0
        for r in range(1, rounds + 1):
            with RunStore(run.run_dir) as db:
                db.start_round(run.run_id, r, None)
            for name in ROUND_STAGES:
                sync()
                t = time.perf_counter()
                getattr(stages, name)(run, r)
                sync()
                seconds[name] += time.perf_counter() - t
                if cuda:
                    free, total = torch.cuda.mem_get_info()
                    device_used_max = max(device_used_max, total - free)
            with RunStore(run.run_dir) as db:
                kept = db.kept_groups(run.run_id, r)
            trained_tokens += sum(len(ids) for ids in kept.column("completion_token_ids").to_pylist())
            ckpt = stages.checkpoint_dir(run, r)
            ckpt_bytes.append(sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()))
    round_s = sum(seconds.values())
    inside = meter.generate_s + meter.update_s
    gib = 2 ** 30
    return {
        "setup_seconds": round(setup_s, 2),
        "stage_seconds_per_round": {k: round(v / rounds, 3) for k, v in seconds.items()},
        "round_seconds": round(round_s / rounds, 3),
        "generation_seconds_per_round": round(meter.generate_s / rounds, 3),
        "update_seconds_per_round": round(meter.update_s / rounds, 3),
        "outside_generation_and_update_share": round(1 - inside / round_s, 4) if round_s else None,
        "generated_tokens_per_s": round(meter.generated_tokens / meter.generate_s, 1)
        if meter.generate_s else None,
        "trained_completion_tokens_per_s": round(trained_tokens / meter.update_s, 1)
        if meter.update_s else None,
        "peak_torch_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 3) if cuda else None,
        "peak_device_used_gib": round(device_used_max / gib, 3) if cuda else None,
        "checkpoint_bytes": ckpt_bytes[-1],
        "checkpoint_seconds_per_round": round(meter.checkpoint_s / rounds, 3),
    }


def bench_gpu_main(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_bench_gpu(device=args.device, tiny=args.tiny, engines=args.engines,
                           rounds=args.rounds, out=args.out)
    print(json.dumps(result))
    return 0
