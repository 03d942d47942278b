"""GRPO: advantages, the clipped token-level loss, the policy update and trainer state."""

import copy
import math

import pytest
import torch

from insight.policy.grpo import (
    PolicyBatch,
    group_advantages,
    grpo_loss,
    load_trainer_state,
    make_optimizer,
    make_policy_batch,
    policy_update,
    read_trainer_state,
    save_trainer_state,
    zero_advantage_share,
)
from insight.policy.model import build_tiny_policy

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


# ----------------------------------------------------------------------- advantages


def test_group_advantages_standardize_within_each_group_with_sample_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    adv = group_advantages(rewards, eps=0.0)
    s = math.sqrt(3) / 2  # 0.5 / sqrt(1/3)
    expected = torch.tensor([[s, -s, -s, s], [0.0, 0.0, 0.0, 0.0], [-0.5, -0.5, -0.5, 1.5]])
    torch.testing.assert_close(adv, expected)


def test_group_advantages_without_std_are_centered_rewards():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.6, 0.8]])
    expected = torch.tensor([[-0.25, -0.25, -0.25, 0.75], [-0.3, -0.1, 0.1, 0.3]])
    torch.testing.assert_close(group_advantages(rewards, normalize_std=False), expected)


def test_uniform_groups_and_single_rollouts_give_zero_advantage():
    assert torch.equal(group_advantages(torch.ones(3, 5)), torch.zeros(3, 5))
    assert torch.equal(group_advantages(torch.tensor([[1.0], [0.0]])), torch.zeros(2, 1))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(4))


def test_zero_advantage_share_counts_groups_without_spread():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert zero_advantage_share(rewards) == 0.5


# ----------------------------------------------------------------------- loss


def _lp(values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def test_on_policy_loss_is_minus_token_mean_of_advantages():
    lp = _lp([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -0.5])
    loss, st = grpo_loss(lp, lp.detach(), adv, mask)
    # tokens: +1, +1 (seq 0), -0.5 (seq 1) -> -(1 + 1 - 0.5) / 3
    assert loss.item() == pytest.approx(-0.5)
    assert st["n_tokens"] == 3 and st["ratio_mean"] == pytest.approx(1.0)
    assert st["clip_frac"] == 0.0 and st["kl"] == 0.0
    loss.backward()
    # d loss / d logprob = -A / (number of valid tokens); padding gets no gradient
    expected = torch.tensor([[-1 / 3, -1 / 3, 0.0], [0.5 / 3, 0.0, 0.0]])
    torch.testing.assert_close(lp.grad, expected)


def test_token_level_normalization_weights_every_token_equally():
    # a 1-token sequence with A=+1 and a 3-token sequence with A=-1:
    # token-level: -(1 - 3) / 4 = +0.5 (a sequence mean would give 0)
    lp = _lp([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    loss, _ = grpo_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), mask)
    assert loss.item() == pytest.approx(0.5)
    # an explicit normalizer replaces the token count (micro-batches of a larger batch)
    loss8, _ = grpo_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), mask, normalizer=8)
    assert loss8.item() == pytest.approx(0.25)


@pytest.mark.parametrize(
    "ratio, adv, expected_loss, has_grad, clipped",
    [
        (1.5, 1.0, -1.2, False, True),  # A>0, ratio above 1+eps: clipped, no gradient
        (0.5, 1.0, -0.5, True, False),  # A>0, ratio below 1-eps: pessimistic unclipped term
        (0.5, -1.0, 0.8, False, True),  # A<0, ratio below 1-eps: clipped, no gradient
        (1.5, -1.0, 1.5, True, False),  # A<0, ratio above 1+eps: unclipped, keeps pushing down
        (1.1, 1.0, -1.1, True, False),  # inside the trust region
    ],
)
def test_ppo_clipping(ratio, adv, expected_loss, has_grad, clipped):
    old = torch.tensor([[-1.0]])
    lp = (old + math.log(ratio)).clone().requires_grad_(True)
    loss, st = grpo_loss(lp, old, torch.tensor([adv]), torch.ones(1, 1), clip_eps=0.2)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    loss.backward()
    assert (lp.grad.abs().item() > 0) == has_grad
    assert st["clip_frac"] == (1.0 if clipped else 0.0)


def test_clip_higher_widens_only_the_upper_bound():
    old = torch.tensor([[0.0, 0.0]])
    lp = torch.log(torch.tensor([[1.25, 0.75]]))
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    sym, st_sym = grpo_loss(lp, old, adv, mask, clip_eps=0.2)
    high, st_high = grpo_loss(lp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    # symmetric: token 1 clipped to 1.2; token 2 clipped to 0.8 (A<0) -> (-1.2 + 0.8) / 2
    assert sym.item() == pytest.approx(-0.2)
    assert st_sym["clip_frac"] == 1.0
    # clip-higher: 1.25 < 1.28 stays, the lower bound is unchanged -> (-1.25 + 0.8) / 2
    assert high.item() == pytest.approx(-0.225)
    assert st_high["clip_frac"] == 0.5


def test_k3_kl_penalty_to_reference():
    lp = _lp([[0.0, 0.0]])
    ref = torch.tensor([[math.log(2.0), 0.0]])  # ref - logp = log 2 on token 1, 0 on token 2
    mask = torch.ones(1, 2)
    loss, st = grpo_loss(lp, lp.detach(), torch.tensor([0.0]), mask, ref_logprobs=ref, kl_coef=0.5)
    k3 = 2.0 - math.log(2.0) - 1.0  # exp(d) - d - 1 = 0.30685
    assert st["kl"] == pytest.approx(k3 / 2)
    assert loss.item() == pytest.approx(0.5 * k3 / 2)
    loss.backward()
    # d/dlogp [exp(ref-lp) - (ref-lp) - 1] = 1 - exp(ref-lp) = -1 on token 1: pulls lp up
    torch.testing.assert_close(lp.grad, torch.tensor([[0.5 * -1.0 / 2, 0.0]]))
    # kl_coef 0 or no reference: no KL term
    loss0, st0 = grpo_loss(lp, lp.detach(), torch.tensor([0.0]), mask, ref_logprobs=ref, kl_coef=0.0)
    assert loss0.item() == 0.0 and st0["kl"] == 0.0


# ----------------------------------------------------------------------- update


def _toy_batch():
    # prompts of different lengths, completions of different lengths (some with EOS=2)
    return PolicyBatch(
        prompt_ids=[[1, 8, 18], [1, 9, 14, 10, 18], [1, 8, 18], [1, 7, 15, 7, 7, 18], [1, 5, 18]],
        completion_ids=[[8, 2], [9, 9, 9, 2], [5], [6, 6, 2], [11, 12]],
        advantages=[1.0, -0.5, 0.0, 0.7, -1.2],
    )


def _params_after_update(model, batch, **kw):
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    policy_update(m, opt, batch, max_grad_norm=None, **kw)
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_micro_batches_accumulate_to_the_full_batch_gradient():
    model, _ = build_tiny_policy(0, **SMALL)
    batch = _toy_batch()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    full = _params_after_update(model, batch, micro_batch_size=64)
    for mb in (1, 2, 3):
        micro = _params_after_update(model, batch, micro_batch_size=mb)
        torch.testing.assert_close(micro - before, full - before, rtol=1e-4, atol=1e-7)
    assert (full - before).abs().max() > 0


def test_skipping_zero_advantage_sequences_does_not_change_the_update():
    model, _ = build_tiny_policy(0, **SMALL)
    batch = _toy_batch()
    a = _params_after_update(model, batch, micro_batch_size=2, skip_zero_advantage=True)
    b = _params_after_update(model, batch, micro_batch_size=2, skip_zero_advantage=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_all_zero_advantages_take_no_optimizer_step():
    model, _ = build_tiny_policy(0, **SMALL)
    batch = _toy_batch()
    batch.advantages = [0.0] * len(batch)
    opt = make_optimizer(model, 1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    st = policy_update(model, opt, batch, micro_batch_size=2)
    assert st["steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_update_raises_logprob_of_advantaged_completions_and_reports_stats():
    model, tok = build_tiny_policy(0, **SMALL)
    prompt = tok("12+3=")["input_ids"]
    good = tok("15", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad = tok("-7-", add_special_tokens=False)["input_ids"]  # truncated, no token shared with good
    batch = PolicyBatch([prompt, prompt], [good, bad], [1.0, -1.0])
    opt = make_optimizer(model, 1e-3)
    from insight.policy.grpo import _collate, completion_logprobs

    def seq_lp():
        with torch.no_grad():
            coll = _collate(batch, 0, "cpu")
            return (completion_logprobs(model, coll) * coll["completion_mask"]).sum(-1)

    lp0 = seq_lp()
    st = policy_update(model, opt, batch, micro_batch_size=8, epochs=2, clip_eps=0.2)
    lp1 = seq_lp()
    assert lp1[0] > lp0[0] and lp1[1] < lp0[1]
    assert st["steps"] == 2 and st["n_tokens"] == 6 and st["n_sequences"] == 2
    assert st["grad_norm"] > 0 and 0.0 <= st["clip_frac"] <= 1.0
    assert not model.training  # left in eval mode, ready for generation


def test_kl_to_reference_needs_a_forward_of_the_reference_model():
    model, _ = build_tiny_policy(0, **SMALL)
    ref = copy.deepcopy(model)
    batch = _toy_batch()
    opt = make_optimizer(model, 1e-2)
    # first step: policy == reference -> KL estimate 0
    st = policy_update(model, opt, batch, ref_model=ref, kl_coef=0.1, micro_batch_size=2)
    assert st["kl"] == pytest.approx(0.0, abs=1e-7)
    st = policy_update(model, opt, batch, ref_model=ref, kl_coef=0.1, micro_batch_size=2)
    assert st["kl"] > 0


def test_make_policy_batch_repeats_prompts_and_assigns_group_advantages():
    _, tok = build_tiny_policy(0, **SMALL)
    comp = [[[5, 2], [6, 2]], [[7, 2], [7, 2]]]
    b = make_policy_batch(tok, ["1+1=", "3-1="], comp, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert len(b) == 4
    assert b.prompt_ids[0] == b.prompt_ids[1] == tok("1+1=")["input_ids"]
    assert b.completion_ids == [[5, 2], [6, 2], [7, 2], [7, 2]]
    assert b.advantages[0] > 0 > b.advantages[1] and b.advantages[2:] == [0.0, 0.0]
    with pytest.raises(ValueError):
        PolicyBatch([[1]], [[2], [3]], [0.0])


# ----------------------------------------------------------------------- trainer state


def test_trainer_state_round_trip_keeps_adam_moments(tmp_path):
    model, tok = build_tiny_policy(0, **SMALL)
    opt = make_optimizer(model, 1e-2)
    policy_update(model, opt, _toy_batch(), micro_batch_size=8)
    save_trainer_state(tmp_path / "r1", model, tok, opt, extra={"round": 1})
    m2, tok2, opt2 = load_trainer_state(tmp_path / "r1", lr=5e-3)
    assert read_trainer_state(tmp_path / "r1") == {"round": 1, "optimizer_steps": 1}
    assert opt2.param_groups[0]["lr"] == 5e-3  # the caller's lr wins
    for p, q in zip(model.parameters(), m2.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
    # continuing from disk equals continuing in memory
    for g in opt.param_groups:
        g["lr"] = 5e-3
    policy_update(model, opt, _toy_batch(), micro_batch_size=8)
    policy_update(m2, opt2, _toy_batch(), micro_batch_size=8)
    for p, q in zip(model.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)


def test_load_trainer_state_from_a_plain_policy_dir_starts_a_fresh_optimizer(tmp_path):
    from insight.policy.model import save_policy

    model, tok = build_tiny_policy(0, **SMALL)
    save_policy(model, tok, tmp_path / "p")
    m2, _, opt = load_trainer_state(tmp_path / "p", lr=1e-3)
    assert m2.training and len(opt.state) == 0
