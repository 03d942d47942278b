"""SIMULATION of RLVR learning dynamics, for quick sweeps of selectors and their knobs.

THIS IS A SIMULATION, NOT A MEASUREMENT. Nothing here trains or evaluates a model. The
numbers it produces come from a toy model of how a GRPO-trained policy's per-prompt success
rates move; they show how the selectors (the real ones, from `insight.selection`, sharing
the real posterior) behave on that toy model, and how their parameters interact,
in seconds instead of GPU-days. Whether a selector helps on a real model and task is
answered only by training runs (`insight train` and the data-efficiency benchmark).

The model, and why each part is there
-------------------------------------
*Prompts.* A training pool of `n_prompts` prompts and a held-out set of `n_heldout` prompts
drawn from the same distribution. Prompt i has a fixed *difficulty coordinate* x_i, its
success logit under the initial policy. x is drawn broad (default Normal(-1, 3), or
logit of a U-shaped Beta) so that, as in real RLVR pools, many prompts start with success
rates near 0 or near 1 (their k rollouts all fail or all succeed: zero advantage) and a
minority lies in between. Difficulty "levels" instead draws each level's share of the pool
from a Beta of its own: the world of a real setting, measured by
`insight.report.simulate_fit`, which also fits this model's dynamics to real runs and
reports where it predicts them (docs/simulation.md: mostly it does not).

*Success rate.* At any time, training prompt i succeeds with probability
    p_i = sigmoid(x_i + g(x_i) + m_i)
and held-out prompt j with sigmoid(x_j + g(x_j)). g is a *shared skill* curve over the
difficulty coordinate (what generalizes), m_i a per-prompt offset (what the policy learns
about that prompt only: memorization). Both start at 0.

*Rollouts.* Each round the selector picks B prompts from the posterior it has built so
far; each gets k Bernoulli(p_i) rollouts at the current p (the policy of the previous
round). Every rollout is counted.

*Update (GRPO-like).* For a policy whose only parameter per prompt is the success logit,
the GRPO policy gradient of a group with s successes out of k, with advantages
(r - mean) / std and the loss averaged over the k rollouts, is exactly
    signal = s (k - s) / k^2 / std,   std = sqrt(s (k - s) / (k (k - 1)))   ("std", GRPO)
or s (k - s) / k^2 without the std division ("var", Dr. GRPO). It is zero for all-0 and
all-1 groups (zero advantage: those rollouts are wasted) and largest at s = k/2; in this
model it always points toward success. A trained prompt moves its own offset
    m_i += lr * signal_i
and the shared skill moves near its difficulty (generalization to similar prompts):
    g(x) += transfer_lr / B * sum_i signal_i * exp(-(x - x_i)^2 / (2 transfer_width^2)).
So learning at difficulty x lifts held-out prompts of similar difficulty; prompts far
harder than anything that currently gives signal only improve once the frontier of
informative prompts moves toward them (an emergent curriculum).

*Step size.* Default ("sgd"): a round's movement is proportional to the summed signal,
so zero-advantage groups dilute it. "normalized" (Adam-like): the round's signals are
rescaled so that they sum to B times the signal of a half-correct group; then a batch with
one informative group moves the policy as far as a full one (there is no gradient noise
in this model to punish it), and selection matters only through *where* learning happens
and through rounds wasted with no informative group at all. Real training
(Adam with clipping, many shared parameters) lies somewhere in between; sweep both.

*Drift* (optional, `drift`): each round every training prompt's offset takes a
Normal(0, drift) step — non-stationarity beyond what training explains, which is what
the posterior's forgetting factor lam < 1 is for.

*Held-out accuracy* is the exact expected success rate over the held-out set (no
sampling noise in the evaluation), evaluated after every round.

*Dynamic sampling* (DAPO, the `dynamic-sampling` selector): a generation batch of B groups
is drawn; groups with 0 < s < k are kept; more batches (excluding prompts already drawn this
round) are generated until B are kept or `max_num_gen_batches` batches were drawn, and the
kept groups are truncated to B. Every generated rollout counts toward the budget; every
generated group (kept or not) is evidence for the posterior, as in the pipeline. If the
cap is hit with fewer than B kept, the round trains on what it has.

Known biases of the model (read them before quoting a number): the gradient is noiseless
and always improves a prompt; there is no interference between prompts (training never
hurts another prompt), no KL or entropy effects, no forgetting of the shared skill; the
held-out set matches the pool's difficulty distribution exactly; rollouts are the only cost
(selection is free). Each of these flatters some selectors and penalizes others.

Seeds: the pool, the held-out set and the random numbers behind every rollout derive from
the run seed only (common random numbers): two selectors with the same seed face the same
prompts, and the same prompt rolled out in the same round gets the same outcome uniforms,
so differences between selectors are not noise in the pool.

API: `SimConfig`, `Variant`, `World`, `run_simulation(sim, variant, seed)` here (the model
and one run); `expand_grid(selectors, grid)`, `sweep(sim, variants, seeds)`,
`summarize(...)` and `write_outputs(...)` in `insight.report.simulate_sweep`; the command line
`insight bench simulate` in `flows.cli_simulate`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

LABEL = "SIMULATION"
DISCLAIMER = ("SIMULATION, not a measurement: a toy model of GRPO learning dynamics "
              "(see insight/report/simulate.py); no model was trained or evaluated.")

POSTERIOR_KEYS = ("lam", "a0", "b0", "decay", "prior", "group_shrinkage", "half_life",
                  "knn_neighbours", "feature_strength")
DEFAULT_SELECTORS = ("insight", "mopps", "difficulty", "mi", "dynamic-sampling", "uniform")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SimConfig:
    """Parameters of the simulated world and of the runs (not of the selectors)."""

    n_prompts: int = 1024          # training pool size N
    n_heldout: int = 1024          # held-out prompts, same difficulty distribution
    batch_size: int = 32           # B, groups trained per round
    k: int = 8                     # rollouts per group
    budget: int = 60_000           # rollouts per run (all generated rollouts count)
    max_rounds: int = 100_000      # safety cap on rounds
    difficulty: Literal["normal", "beta", "levels"] = "normal"
    logit_mean: float = -1.0       # "normal": x ~ Normal(logit_mean, logit_std)
    logit_std: float = 3.0
    beta_a: float = 0.5            # "beta": sigmoid(x) ~ Beta(beta_a, beta_b) (U-shaped if < 1)
    beta_b: float = 0.7
    levels: tuple[tuple[float, float, float], ...] = ()  # "levels": (share, mean success,
                                   # concentration) per level; p ~ Beta(mean c, (1-mean) c)
                                   # on a share of the pool (a world fitted to real runs:
                                   # insight.report.simulate_fit)
    lr: float = 0.3                # own-offset step per unit signal
    transfer_lr: float = 0.1       # shared-skill step per unit mean signal
    transfer_width: float = 1.0    # kernel width over the difficulty coordinate (logits)
    signal: Literal["std", "var"] = "std"          # GRPO (std-normalized) or Dr. GRPO
    step: Literal["sgd", "normalized"] = "sgd"     # see module docstring
    drift: float = 0.0             # per-round Normal(0, drift) walk of per-prompt offsets
    target_gains: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20)  # targets = initial acc + gain
    targets: tuple[float, ...] | None = None  # absolute targets; override target_gains
    n_groups: int = 0              # data labels for the grouped prior (0: none): quantile
                                   # bins of x + Normal(0, group_noise), like MATH's levels
    group_noise: float = 1.0       # how loosely a label tracks difficulty (logits)
    feature_noise: float = 1.0     # the feature prior's "embedding": the prompt's shared-
                                   # skill logit x + g(x) + a fixed Normal(0, feature_noise)

    def __post_init__(self):
        for name in ("n_prompts", "n_heldout", "batch_size", "k", "budget", "max_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"SimConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size > self.n_prompts:
            raise ValueError(f"batch_size ({self.batch_size}) > n_prompts ({self.n_prompts})")
        for name in ("logit_std", "beta_a", "beta_b", "transfer_width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SimConfig.{name} must be > 0")
        if self.n_groups < 0:
            raise ValueError(f"SimConfig.n_groups must be >= 0, got {self.n_groups}")
        for name in ("lr", "transfer_lr", "drift", "group_noise", "feature_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimConfig.{name} must be >= 0")
        if self.difficulty not in ("normal", "beta", "levels"):
            raise ValueError("difficulty must be 'normal', 'beta' or 'levels', "
                             f"got {self.difficulty!r}")
        if self.difficulty == "levels":
            _check_levels(self.levels)
        if self.signal not in ("std", "var"):
            raise ValueError(f"signal must be 'std' or 'var', got {self.signal!r}")
        if self.step not in ("sgd", "normalized"):
            raise ValueError(f"step must be 'sgd' or 'normalized', got {self.step!r}")


def _check_levels(levels) -> None:
    if not levels:
        raise ValueError("difficulty 'levels' needs levels: (share, mean, concentration) each")
    for lv in levels:
        if len(lv) != 3:
            raise ValueError(f"a level is (share, mean, concentration), got {lv!r}")
        share, mean, conc = (float(v) for v in lv)
        if share < 0 or not 0 <= mean <= 1 or conc <= 0:
            raise ValueError(f"level {lv!r}: need share >= 0, 0 <= mean <= 1, concentration > 0")
    if sum(float(lv[0]) for lv in levels) <= 0:
        raise ValueError("level shares must not all be 0")


@dataclass(frozen=True)
class Variant:
    """One selector configuration: the selector's own fields plus the posterior's."""

    selector: dict[str, Any]                       # {"type": "insight", "gamma": 2.0, ...}
    posterior: dict[str, Any] = field(default_factory=dict)  # lam, a0, b0, decay, prior

    @property
    def type(self) -> str:
        return str(self.selector["type"])

    @property
    def name(self) -> str:
        extras = [f"{k}={_fmt(v)}" for k, v in sorted(self.selector.items()) if k != "type"]
        extras += [f"{k}={_fmt(v)}" for k, v in sorted(self.posterior.items())]
        return self.type + (f"[{','.join(extras)}]" if extras else "")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def posterior_params(variant: Variant) -> dict[str, Any]:
    """The variant's posterior settings over the defaults, validated (a bad value or an
    unknown key raises ValueError naming it)."""
    p = {"lam": 1.0, "a0": 1.0, "b0": 1.0, "decay": "observed", "prior": "fixed",
         "group_shrinkage": 20.0, "half_life": None, "knn_neighbours": 16,
         "feature_strength": 4.0}
    unknown = set(variant.posterior) - set(p)
    if unknown:
        raise ValueError(f"unknown posterior parameter(s) {sorted(unknown)}; "
                         f"known: {sorted(p)}")
    p.update(variant.posterior)
    if not 0 < float(p["lam"]) <= 1:
        raise ValueError(f"lam must be in (0, 1], got {p['lam']}")
    if float(p["a0"]) <= 0 or float(p["b0"]) <= 0:
        raise ValueError("a0 and b0 must be > 0")
    from insight.selection.views import PRIORS
    if p["prior"] not in PRIORS:
        raise ValueError(f"prior must be one of {list(PRIORS)}, got {p['prior']!r}")
    if float(p["group_shrinkage"]) < 0:
        raise ValueError(f"group_shrinkage must be >= 0, got {p['group_shrinkage']}")
    if p["half_life"] is not None:
        from insight.selection.forgetting import check_half_life
        check_half_life(p["half_life"])
        if float(p["lam"]) != 1.0:
            raise ValueError("half_life and lam < 1 both forget; use lam 1 with half_life")
    if p["decay"] not in ("observed", "all"):
        raise ValueError(f"decay must be 'observed' or 'all', got {p['decay']!r}")
    return p


# --------------------------------------------------------------------------- dynamics
def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


def group_signal(successes: np.ndarray, k: int, kind: str = "std") -> np.ndarray:
    """GRPO gradient on a Bernoulli policy's success logit, per group, with the loss
    averaged over the group's k rollouts: s(k-s)/k^2, divided by the group's sample std
    for "std" (GRPO), left as is for "var" (Dr. GRPO). Zero when s = 0, s = k or k = 1."""
    s = np.asarray(successes, dtype=float)
    if k < 2:
        return np.zeros_like(s)
    mixed = s * (k - s)
    if kind == "var":
        return mixed / k**2
    if kind == "std":
        return np.sqrt(np.clip(mixed, 0.0, None) * (k - 1) / k**3)
    raise ValueError(f"unknown signal kind {kind!r}")


def draw_difficulty(sim: SimConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Difficulty coordinates (initial success logits) of n prompts."""
    if sim.difficulty == "normal":
        return rng.normal(sim.logit_mean, sim.logit_std, n)
    if sim.difficulty == "levels":
        p = _draw_levels(sim.levels, n, rng)
    else:
        p = rng.beta(sim.beta_a, sim.beta_b, n)
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p) - np.log1p(-p)


def level_counts(shares, n: int) -> np.ndarray:
    """n split over the levels in proportion to their shares (largest remainder), so a
    pool has the real pool's level mix exactly rather than up to sampling noise."""
    w = np.asarray(shares, dtype=float) / float(np.sum(shares))
    raw = w * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


def _draw_levels(levels, n: int, rng: np.random.Generator) -> np.ndarray:
    """Initial success rates of n prompts from per-level Beta distributions (prompts in
    level order; the order carries no meaning, the selectors see ids only)."""
    counts = level_counts([lv[0] for lv in levels], n)
    parts = []
    for (_, mean, conc), c in zip(levels, counts):
        mean = float(np.clip(mean, 1e-6, 1 - 1e-6))  # Beta needs both shapes > 0
        parts.append(rng.beta(mean * conc, (1 - mean) * conc, c))
    return np.concatenate(parts)


class World:
    """The simulated policy: difficulty coordinates, shared skill curve, per-prompt offsets.

    The shared skill g lives on a fine grid over the difficulty coordinate and is
    interpolated at the prompts (exact up to the grid spacing, and independent of pool size).
    """

    GRID_STEP = 0.05

    def __init__(self, sim: SimConfig, seed: int):
        self.sim = sim
        rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
        self.x_train = draw_difficulty(sim, sim.n_prompts, rng)
        self.x_held = draw_difficulty(sim, sim.n_heldout, rng)
        lo = min(self.x_train.min(), self.x_held.min()) - 4 * sim.transfer_width
        hi = max(self.x_train.max(), self.x_held.max()) + 4 * sim.transfer_width
        self.grid = np.arange(lo, hi + self.GRID_STEP, self.GRID_STEP)
        self.g_grid = np.zeros_like(self.grid)
        self.offset = np.zeros(sim.n_prompts)
        self.groups = self._group_labels(seed) if sim.n_groups else None
        self.feature_eps = np.random.default_rng(np.random.SeedSequence([seed, 13])).normal(
            0.0, sim.feature_noise, sim.n_prompts)

    def features(self) -> np.ndarray:
        """What the current policy "sees" of each prompt: its logit under the shared skill
        (what generalises, not the per-prompt offset) blurred by fixed noise."""
        return self.x_train + self.skill(self.x_train) + self.feature_eps

    def _group_labels(self, seed: int) -> np.ndarray:
        """Level labels 1..n_groups: quantile bins of a noisy copy of the difficulty (a
        stream of its own, so the world is the same with or without labels)."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, 12]))
        noisy = -self.x_train + rng.normal(0.0, self.sim.group_noise, self.x_train.shape)
        edges = np.quantile(noisy, np.linspace(0, 1, self.sim.n_groups + 1)[1:-1])
        return np.searchsorted(edges, noisy).astype(np.int64) + 1

    def skill(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.grid, self.g_grid)

    def p_train(self) -> np.ndarray:
        return sigmoid(self.x_train + self.skill(self.x_train) + self.offset)

    def heldout_accuracy(self) -> float:
        return float(sigmoid(self.x_held + self.skill(self.x_held)).mean())

    def train(self, idx: np.ndarray, successes: np.ndarray) -> np.ndarray:
        """One GRPO-like update on the trained groups (prompt indices, successes).
        Returns the per-group signal used."""
        sim = self.sim
        sig = group_signal(successes, sim.k, sim.signal)
        if sim.step == "normalized" and sig.sum() > 0:
            # Adam-like: the round's total step is that of B half-correct groups, however
            # many groups were informative; groups share it in proportion to their signal.
            ref = float(group_signal(np.array([sim.k // 2]), sim.k, sim.signal)[0])
            sig = sig * (sim.batch_size * ref / sig.sum())
        np.add.at(self.offset, idx, sim.lr * sig)
        if sig.any():
            live = sig > 0
            d = self.grid[:, None] - self.x_train[idx[live]][None, :]
            kern = np.exp(-0.5 * (d / sim.transfer_width) ** 2)
            self.g_grid += (sim.transfer_lr / sim.batch_size) * (kern @ sig[live])
        return sig

    def apply_drift(self, rng: np.random.Generator) -> None:
        if self.sim.drift > 0:
            self.offset += rng.normal(0.0, self.sim.drift, self.offset.shape)


def _rollout(p: np.ndarray, idx: np.ndarray, k: int, seed: int, round_: int,
             gen_batch: int) -> np.ndarray:
    """Successes of k Bernoulli rollouts for prompts idx. Uniforms are drawn for the whole
    pool, so a prompt's outcome in a round does not depend on which others were chosen."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 22, round_, gen_batch]))
    u = rng.random((p.shape[0], k))
    return (u[idx] < p[idx, None]).sum(axis=1)


def rollouts_to_target(rollouts: np.ndarray, acc: np.ndarray, target: float) -> float | None:
    """Rollouts at which the accuracy curve first reaches target (linear interpolation
    between rounds), or None if it never does."""
    hit = np.flatnonzero(acc >= target)
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(rollouts[0])
    r0, r1, a0, a1 = rollouts[i - 1], rollouts[i], acc[i - 1], acc[i]
    return float(r0 + (r1 - r0) * (target - a0) / (a1 - a0)) if a1 > a0 else float(r1)


def targets_for(sim: SimConfig, initial_accuracy: float) -> list[float]:
    if sim.targets is not None:
        return [float(t) for t in sim.targets]
    return [round(initial_accuracy + g, 6) for g in sim.target_gains]


# --------------------------------------------------------------------------- one run
def build_selector_config(selector: dict[str, Any]):
    """Validate a selector dict into the pipeline's SelectorConfig (errors name the field)."""
    from insight.selection.registry import parse_selector_config
    return parse_selector_config(dict(selector))


@contextmanager
def mi_backend(name: str = "numpy"):
    """Run the selectors with the given I_k backend ("numpy", "numba" or "auto").

    Why the simulator picks numpy by default: its pools are small (~1e3 prompts) and it
    runs hundreds of selections per run, where the compiled kernel's one-off JIT (~20 s per
    process on this machine) and its parallel-launch latency on a loaded 2-core machine
    (tens of ms per call) cost more than numpy's ~2-5 ms. Both backends compute the same
    I_k (tested equal to ~1e-11 in the core). The switch is the MI module's
    ``numba_disabled``, set for the duration of the block and then restored.
    """
    from insight.selection.mi import numba_disabled
    if name not in ("numpy", "numba", "auto"):
        raise ValueError(f"mi backend must be numpy, numba or auto, got {name!r}")
    with numba_disabled(name == "numpy"):
        yield


def run_simulation(sim: SimConfig, variant: Variant, seed: int, *,
                   backend: str = "numpy") -> dict[str, Any]:
    """Simulate one run of `variant` on the world of `seed` until the rollout budget is
    spent. Pure: the result depends only on (sim, variant, seed) (except the
    `select_seconds` timing). `backend`: see `mi_backend`.

    Returns a JSON-able dict: label "SIMULATION", variant name, seed, `summary` (rounds,
    rollouts, initial/final/mean held-out accuracy, zero_adv_share, extra_rollouts,
    targets and rollouts_to_target (None = never reached), signal_per_1k_rollouts,
    prompts_touched) and per-round `curves` (index 0 = the start, before any round):
    rollouts (cumulative, every generated rollout), heldout_accuracy, train_accuracy,
    zero_adv_share / all_fail_share / all_success_share (of the generated groups),
    groups (generated) and kept_groups (trained), selected_true_p and selected_true_pq
    (mean true p and p(1-p) of the generated groups: how mixed they really were),
    selected_evidence (mean alpha + beta the posterior held on them before the round) and
    train_signal (sum of the trained groups' signal)."""
    with mi_backend(backend):
        return _run_simulation(sim, variant, seed)


def _run_simulation(sim: SimConfig, variant: Variant, seed: int) -> dict[str, Any]:
    from insight.selection.dapo import generation_batches
    from insight.selection.posterior import PosteriorState
    from insight.selection.registry import get as selector_spec, make_selector
    from insight.selection.views import selection_view

    post_cfg = posterior_params(variant)
    selector_cfg = build_selector_config(variant.selector)
    selector = make_selector(selector_cfg)
    dynamic = selector_spec(variant.type).dapo_refill
    max_gen = int(selector_cfg.max_num_gen_batches) if dynamic else 1

    world = World(sim, seed)
    n, B, k = sim.n_prompts, sim.batch_size, sim.k
    ids = np.array([f"p{i:06d}" for i in range(n)], dtype=object)
    index = {pid: i for i, pid in enumerate(ids)}
    lam, a0, b0 = float(post_cfg["lam"]), float(post_cfg["a0"]), float(post_cfg["b0"])
    post = PosteriorState.new(ids, a0=a0, b0=b0)
    cum_s = np.zeros(n)
    cum_n = np.zeros(n)
    prior = post_cfg["prior"]
    if prior == "grouped-empirical-bayes" and sim.n_groups == 0:
        raise ValueError("prior grouped-empirical-bayes needs labelled prompts: "
                         "set n_groups > 0 (--n-groups)")
    half_life = post_cfg["half_life"]
    rho = 0.5 ** (1.0 / float(half_life)) if half_life is not None else 1.0
    dec_s, dec_n = np.zeros(n), np.zeros(n)
    drift_rng = np.random.default_rng(np.random.SeedSequence([seed, 33]))

    acc0 = world.heldout_accuracy()
    curves: dict[str, list] = {k_: [] for k_ in (
        "rollouts", "heldout_accuracy", "train_accuracy", "zero_adv_share", "all_fail_share",
        "all_success_share", "groups", "kept_groups", "selected_true_p", "selected_true_pq",
        "selected_evidence", "train_signal")}
    curves["rollouts"].append(0)
    curves["heldout_accuracy"].append(acc0)
    curves["train_accuracy"].append(float(world.p_train().mean()))
    for key in ("zero_adv_share", "all_fail_share", "all_success_share", "selected_true_p",
                "selected_true_pq", "selected_evidence"):
        curves[key].append(None)
    curves["groups"].append(0)
    curves["kept_groups"].append(0)
    curves["train_signal"].append(0.0)
    ever = np.zeros(n, dtype=bool)

    consumed, round_ = 0, 0
    select_seconds = 0.0
    while consumed < sim.budget and round_ < sim.max_rounds:
        round_ += 1
        p = world.p_train()
        view = selection_view(
            post, prior=prior, successes=cum_s, trials=cum_n, groups=world.groups,
            shrinkage=float(post_cfg["group_shrinkage"]),
            decayed=(dec_s, dec_n) if half_life is not None else None,
            features=world.features() if prior == "feature-knn" else None,
            neighbours=int(post_cfg["knn_neighbours"]),
            strength=float(post_cfg["feature_strength"])).posterior
        n_before = post.alpha + post.beta  # posterior concentration before this round
        timer = {"select": 0.0}

        def draw(gen: int, drawn: frozenset) -> list[str]:
            rng = np.random.default_rng(np.random.SeedSequence([seed, 44, round_, gen]))
            t0 = time.perf_counter()
            sel = selector.select(view, B, k, rng, exclude=drawn) if drawn \
                else selector.select(view, B, k, rng)
            timer["select"] += time.perf_counter() - t0
            return list(sel.prompt_ids)

        def generate(chosen: list[str], gen: int) -> np.ndarray:
            idx = np.fromiter((index[c] for c in chosen), dtype=np.int64, count=len(chosen))
            return _rollout(p, idx, k, seed, round_, gen)

        # The pipeline's own round loop (insight.selection.dapo): for dynamic sampling,
        # filter 0 < s < k, truncate to B, refill until B kept or max_num_gen_batches.
        batches, _ = generation_batches(draw, generate, batch_size=B, k=k, dapo=dynamic,
                                        max_num_gen_batches=max_gen)
        select_seconds += timer["select"]
        all_idx = [np.fromiter((index[c] for c in b.prompt_ids), dtype=np.int64,
                               count=len(b.prompt_ids)) for b in batches]
        all_s = [b.successes for b in batches]
        kept_idx = [i[b.keep] for i, b in zip(all_idx, batches)]
        kept_s = [b.successes[b.keep] for b in batches]
        g_idx, g_s = np.concatenate(all_idx), np.concatenate(all_s)
        t_idx, t_s = np.concatenate(kept_idx), np.concatenate(kept_s)
        consumed += k * len(g_idx)

        world.train(t_idx, t_s)
        sig = group_signal(t_s, k, sim.signal)  # raw (before any step normalization)
        ever[g_idx] = True
        world.apply_drift(drift_rng)

        trials = np.full(len(g_idx), float(k))
        post = post.observe(ids[g_idx], g_s.astype(float), trials, lam=lam, a0=a0, b0=b0,
                            decay=post_cfg["decay"])
        selector.observe(ids[g_idx], g_s.astype(float), trials)
        np.add.at(cum_s, g_idx, g_s)
        np.add.at(cum_n, g_idx, k)
        if half_life is not None:  # forgetting.decayed_counts, kept incrementally
            dec_s *= rho
            dec_n *= rho
            np.add.at(dec_s, g_idx, g_s)
            np.add.at(dec_n, g_idx, k)

        zero = (g_s == 0) | (g_s == k)
        curves["rollouts"].append(consumed)
        curves["heldout_accuracy"].append(world.heldout_accuracy())
        curves["train_accuracy"].append(float(world.p_train().mean()))
        curves["zero_adv_share"].append(float(zero.mean()))
        curves["all_fail_share"].append(float((g_s == 0).mean()))
        curves["all_success_share"].append(float((g_s == k).mean()))
        curves["groups"].append(int(len(g_idx)))
        curves["kept_groups"].append(int(len(t_idx)))
        curves["selected_true_p"].append(float(p[g_idx].mean()))
        # diagnostics: how mixed the chosen prompts truly were (p(1-p), max 0.25), and how
        # much evidence the posterior already held on them (alpha + beta)
        curves["selected_true_pq"].append(float((p[g_idx] * (1 - p[g_idx])).mean()))
        curves["selected_evidence"].append(float(n_before[g_idx].mean()))
        curves["train_signal"].append(float(sig.sum()))

    r = np.asarray(curves["rollouts"], dtype=float)
    a = np.asarray(curves["heldout_accuracy"], dtype=float)
    targets = targets_for(sim, acc0)
    zs = curves["zero_adv_share"][1:]
    groups = np.asarray(curves["groups"][1:], dtype=float)
    summary = {
        "rounds": round_,
        "rollouts": consumed,
        "initial_accuracy": acc0,
        "final_accuracy": float(a[-1]),
        # mean held-out accuracy over the budget (area under the curve / rollouts spent):
        # one number that rewards learning early
        "mean_accuracy": (float(np.sum((a[1:] + a[:-1]) * np.diff(r)) / (2 * r[-1]))
                          if r[-1] > 0 else float(a[0])),
        "zero_adv_share": float(np.dot(zs, groups) / groups.sum()) if groups.sum() else None,
        "extra_rollouts": int(k * (groups.sum() - np.asarray(curves["kept_groups"][1:]).sum())),
        "targets": targets,
        "rollouts_to_target": [rollouts_to_target(r, a, t) for t in targets],
        # learning signal (sum over trained groups) per 1,000 rollouts: how much of the
        # budget turned into gradient, wherever it was spent
        "signal_per_1k_rollouts": 1000.0 * float(np.sum(curves["train_signal"])) / max(consumed, 1),
        "prompts_touched": int(ever.sum()),
        "select_seconds": select_seconds,  # wall time in the selectors (not deterministic)
    }
    return {"label": LABEL, "variant": variant.name, "selector": variant.selector,
            "posterior": variant.posterior, "type": variant.type, "seed": seed,
            "summary": summary, "curves": curves}
