"""GRPO's pieces against references computed another way: advantages by hand and through
RLOO's identity, the clipped objective's gradients, k3's expectation as the exact KL, and
each aggregation equal to its definition under any split of the batch."""

import pytest
import torch

from framework.loss.policy_gradient import (
    AGGREGATIONS,
    clipped_token_losses,
    group_advantages,
    k3_kl,
    normaliser_units,
    token_weight,
    uniform_groups,
)


def test_group_advantages_by_hand_and_a_uniform_group_gives_zeros():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    centred = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False), centred)
    scaled = group_advantages(rewards, 4)
    torch.testing.assert_close(scaled[:4], centred[:4] / (3**-0.5 + 1e-4))
    assert torch.equal(scaled[4:], torch.zeros(4))  # equal rewards: 0, not NaN
    assert uniform_groups(rewards, 4).tolist() == [False, True]


def test_leave_one_out_is_the_centred_advantage_times_g_over_g_minus_1():
    """RLOO's r_i - mean(r_j, j != i) equals G/(G-1) (r_i - mean(r))."""
    rewards = torch.rand(6 * 5, generator=torch.Generator().manual_seed(0))
    rloo = group_advantages(rewards, 5, baseline="leave_one_out", scale=False)
    centred = group_advantages(rewards, 5, scale=False)
    torch.testing.assert_close(rloo, centred * 5 / 4)


@pytest.mark.parametrize("size", [1, 3])
def test_rewards_that_do_not_form_groups_are_refused(size):
    with pytest.raises(ValueError, match="do not form groups"):
        group_advantages(torch.zeros(4), size)


def test_at_ratio_one_the_gradient_is_the_policy_gradient():
    """On a fresh batch (the policy is the sampler), each token's loss is -A and its
    gradient with respect to the log-probability is -A; nothing is clipped."""
    logps = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([1.5, -0.5, 0.0], dtype=torch.float64)
    losses, clipped = clipped_token_losses(
        logps, logps.detach(), advantages[:, None], clip_low=0.2, clip_high=0.28
    )
    torch.testing.assert_close(losses, -advantages[:, None].expand(3, 4))
    losses.sum().backward()
    torch.testing.assert_close(logps.grad, -advantages[:, None].expand(3, 4))
    assert not clipped.any()


@pytest.mark.parametrize(("advantage", "ratio", "clipped"), [(1.0, 1.5, True), (1.0, 0.5, False),
                         (-1.0, 0.5, True), (-1.0, 1.5, False), (1.0, 1.25, False)])  # fmt: skip
def test_a_ratio_past_its_bound_in_the_advantages_direction_has_no_gradient(
    advantage, ratio, clipped
):
    """Clip-higher bounds (0.2 below, 0.28 above): a positive advantage stops pushing past
    1.28, a negative one past 0.8; the other side keeps its gradient."""
    old = torch.zeros(1, 1, dtype=torch.float64)
    logps = torch.full((1, 1), float(torch.log(torch.tensor(ratio))), dtype=torch.float64)
    logps.requires_grad_(True)
    losses, taken = clipped_token_losses(
        logps, old, torch.tensor([[advantage]], dtype=torch.float64), clip_low=0.2, clip_high=0.28
    )
    losses.sum().backward()
    assert bool(taken) == clipped
    assert (logps.grad.item() == 0) == clipped


def test_k3_is_zero_on_the_reference_and_its_expectation_is_the_exact_kl():
    generator = torch.Generator().manual_seed(1)
    policy = torch.log_softmax(torch.randn(50, generator=generator, dtype=torch.float64), 0)
    reference = torch.log_softmax(torch.randn(50, generator=generator, dtype=torch.float64), 0)
    assert torch.equal(k3_kl(policy, policy), torch.zeros(50, dtype=torch.float64))
    estimates = k3_kl(policy, reference)
    assert (estimates >= 0).all()
    exact = (policy.exp() * (policy - reference)).sum()  # KL(policy || reference)
    torch.testing.assert_close((policy.exp() * estimates).sum(), exact)


def _defined(losses, mask, aggregation, max_tokens):
    """Each aggregation as its paper writes it, over the whole batch."""
    rows = [losses[i][mask[i]] for i in range(len(losses)) if mask[i].any()]
    if aggregation == "token":
        return torch.cat(rows).mean()
    if aggregation == "sequence":
        return torch.stack([row.mean() for row in rows]).mean()
    return torch.cat(rows).sum() / (len(rows) * max_tokens)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_each_aggregation_is_its_definition_under_any_split(aggregation):
    generator = torch.Generator().manual_seed(2)
    losses = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 6, 4])  # a row without a completion: padding
    mask = torch.arange(6)[None, :] < lengths[:, None]
    expected = _defined(losses, mask, aggregation, max_tokens=6)
    for split in ([8], [3, 2, 3], [1] * 8):
        summed = units = 0.0
        for part_losses, part_lengths in zip(
            losses.split(split), lengths.split(split), strict=True
        ):
            kept = [int(n) for n in part_lengths if n > 0]
            for row, n in zip(part_losses, part_lengths.tolist(), strict=True):
                summed += float(row[:n].sum()) * token_weight(n, aggregation)
            units += normaliser_units(kept, aggregation, max_completion_tokens=6)
        assert summed / units == pytest.approx(float(expected), rel=1e-12), split
