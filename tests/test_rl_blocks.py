"""RL building blocks against hand-computed returns and advantages and analytic baseline fits."""

import pytest
import torch

from rlmaml.rl import (
    LinearFeatureBaseline,
    Trajectories,
    discounted_returns,
    gae,
    masks_from_lengths,
    normalize_advantages,
)

# Two tasks, two episodes each, horizon 4. Padding rewards and values are junk on purpose.
LENGTHS = torch.tensor([[3, 2], [4, 1]])
MASKS = masks_from_lengths(LENGTHS, 4, torch.float64)
REWARDS = torch.tensor(
    [
        [[1.0, 1.0, 1.0, 5.0], [2.0, -1.0, 7.0, 7.0]],
        [[1.0, 0.0, 0.0, 2.0], [3.0, 9.0, 9.0, 9.0]],
    ],
    dtype=torch.float64,
)
VALUES = torch.tensor(
    [
        [[1.0, 2.0, 0.5, 9.0], [0.0, 1.0, 9.0, 9.0]],
        [[0.0, 0.0, 0.0, 1.0], [2.0, 9.0, 9.0, 9.0]],
    ],
    dtype=torch.float64,
)


def _random_batch(n_tasks=3, episodes=5, horizon=12, obs_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, horizon + 1, (n_tasks, episodes), generator=g)
    lengths[0, 0] = horizon
    masks = masks_from_lengths(lengths, horizon, torch.float64)
    obs = 3.0 * torch.randn(n_tasks, episodes, horizon, obs_dim, generator=g, dtype=torch.float64)
    rewards = torch.randn(n_tasks, episodes, horizon, generator=g, dtype=torch.float64)
    values = torch.randn(n_tasks, episodes, horizon, generator=g, dtype=torch.float64)
    return obs, rewards, values, masks


def _hand_features(obs):
    """The baseline features written out independently of the implementation."""
    horizon = obs.shape[2]
    o = obs.clamp(-10, 10)
    t = (torch.arange(horizon, dtype=obs.dtype) / 100.0).view(1, 1, horizon, 1)
    t = t.expand(*obs.shape[:3], 1)
    return torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)


# ---------------------------------------------------------------------------- returns and GAE


def test_discounted_returns_hand_values():
    expected = torch.tensor(
        [
            [[1.75, 1.5, 1.0, 0.0], [1.5, -1.0, 0.0, 0.0]],
            [[1.25, 0.5, 1.0, 2.0], [3.0, 0.0, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(discounted_returns(REWARDS, MASKS, gamma=0.5), expected)


def test_gae_hand_values():
    # gamma * lam = .25. Task 0 episode 0: deltas (1 + .5*2 - 1, 1 + .5*.5 - 2, 1 + 0 - .5)
    # = (1, -.75, .5), A = (1 + .25*(-.625), -.75 + .25*.5, .5). Episode 1: deltas
    # (2 + .5*1 - 0, -1 + 0 - 1) = (2.5, -2), A_0 = 2.5 + .25*(-2). Task 1 episode 0 runs to
    # the horizon and is not bootstrapped: deltas (1, 0, .5, 2 - 1), A = (1 + .25*.1875,
    # 0 + .25*.75, .5 + .25*1, 1). Episode 1: the single delta 3 - 2.
    expected = torch.tensor(
        [
            [[0.84375, -0.625, 0.5, 0.0], [2.0, -2.0, 0.0, 0.0]],
            [[1.046875, 0.1875, 0.75, 1.0], [1.0, 0.0, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(gae(REWARDS, VALUES, MASKS, gamma=0.5, lam=0.5), expected)


def test_gae_lambda_one_is_returns_minus_values():
    _, rewards, values, masks = _random_batch()
    expected = (discounted_returns(rewards, masks, 0.99) - values) * masks
    torch.testing.assert_close(gae(rewards, values, masks, gamma=0.99, lam=1.0), expected)


def test_gae_lambda_zero_is_one_step_td_error():
    _, rewards, values, masks = _random_batch()
    next_values = torch.zeros_like(values)
    next_values[..., :-1] = values[..., 1:] * masks[..., 1:]
    expected = (rewards + 0.9 * next_values - values) * masks
    torch.testing.assert_close(gae(rewards, values, masks, gamma=0.9, lam=0.0), expected)


def test_returns_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="masks"):
        discounted_returns(REWARDS, MASKS[..., :3], 0.9)
    with pytest.raises(ValueError, match="values"):
        gae(REWARDS, VALUES[0], MASKS, 0.9, 1.0)


def test_normalize_advantages_per_task_over_valid_steps():
    _, adv, _, masks = _random_batch(n_tasks=4)
    adv = 5.0 * adv + torch.arange(4, dtype=adv.dtype).view(4, 1, 1)
    adv[2] = 3.0  # constant advantages: no signal, must stay finite
    masks[3] = 0.0  # a task without valid steps
    out = normalize_advantages(adv, masks)
    valid = masks > 0
    assert torch.all(out[~valid] == 0)
    for task in (0, 1):
        values = out[task][valid[task]]
        torch.testing.assert_close(values.mean(), values.new_tensor(0.0))
        torch.testing.assert_close(values.std(unbiased=False), values.new_tensor(1.0))
    assert torch.all(out[2:] == 0)


# --------------------------------------------------------------------------------- baseline


@pytest.mark.parametrize(
    ("reg_coeff", "episodes", "horizon", "atol"),
    [
        (1e-10, 5, 30, 1e-6),  # (almost) plain least squares: exact recovery
        (1e-5, 20, 200, 1e-5),  # the paper's ridge and batch size: a small ridge bias remains
    ],
)
def test_baseline_recovers_linear_value_function(reg_coeff, episodes, horizon, atol):
    obs, _, _, masks = _random_batch(episodes=episodes, horizon=horizon)
    obs[0, 0, 0, 0] = 25.0  # clipped to 10 by the features
    coeffs = torch.randn(3, 2 * 2 + 4, generator=torch.Generator().manual_seed(1)).double()
    returns = torch.einsum("tehf,tf->teh", _hand_features(obs), coeffs)
    returns = torch.where(masks > 0, returns, torch.nan)  # padding returns are ignored
    baseline = LinearFeatureBaseline(reg_coeff=reg_coeff).fit(obs, returns, masks)
    values = baseline.predict(obs, masks)
    torch.testing.assert_close(values, torch.nan_to_num(returns), atol=atol, rtol=0)
    assert not baseline.failed.any()


def test_baseline_returns_input_dtype_and_zero_padding():
    obs, rewards, _, masks = _random_batch()
    returns = discounted_returns(rewards, masks, 0.99)
    baseline = LinearFeatureBaseline().fit(obs.float(), returns.float(), masks.float())
    values = baseline.predict(obs.float(), masks.float())
    assert values.dtype == torch.float32 and baseline.coeffs.dtype == torch.float64
    assert baseline.coeffs.shape == (3, 8)
    assert torch.all(values[masks == 0] == 0)


@pytest.mark.parametrize("case", ["identical_obs", "zero_obs", "single_step", "empty_task"])
def test_baseline_survives_rank_deficient_batches(case):
    obs, rewards, _, masks = _random_batch()
    if case == "identical_obs":
        obs[:] = 0.7
    elif case == "zero_obs":
        obs.zero_()
    elif case == "single_step":
        masks[..., 1:] = 0.0
    else:
        masks[1] = 0.0
    returns = discounted_returns(rewards, masks, 0.99)
    baseline = LinearFeatureBaseline().fit(obs, returns, masks)
    values = baseline.predict(obs, masks)
    assert torch.isfinite(baseline.coeffs).all() and torch.isfinite(values).all()
    assert not baseline.failed.any()
    if case == "single_step":
        obs[:] = 0.0
        baseline.fit(obs, returns, masks)
        mean = returns[:, :, 0].mean(dim=1)  # only constant features left: the mean return
        torch.testing.assert_close(
            baseline.predict(obs, masks)[:, :, 0], mean[:, None].expand(3, 5), rtol=1e-5, atol=0
        )


def test_baseline_retries_only_failed_tasks_with_larger_ridge():
    # Task 0: a constant observation of 1 makes o, o**2 and the bias column identical; with a
    # ridge far below float64 resolution the Cholesky factorisation hits a zero pivot.
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 4, 1, 1, generator=g, dtype=torch.float64)
    obs[0] = 1.0
    returns = torch.randn(2, 4, 1, generator=g, dtype=torch.float64)
    masks = torch.ones(2, 4, 1, dtype=torch.float64)
    baseline = LinearFeatureBaseline(reg_coeff=1e-16).fit(obs, returns, masks)
    assert baseline.ridge[0] > 1e-16 and baseline.ridge[1] == 1e-16
    assert not baseline.failed.any()
    torch.testing.assert_close(baseline.predict(obs, masks)[0], returns[0].mean().expand(4, 1))


def test_baseline_falls_back_to_zero_when_every_attempt_fails():
    obs, rewards, _, masks = _random_batch()
    returns = discounted_returns(rewards, masks, 0.99)
    returns[1, 0, 0] = torch.nan
    baseline = LinearFeatureBaseline().fit(obs, returns, masks)
    assert baseline.failed.tolist() == [False, True, False]
    assert baseline.ridge[1] == pytest.approx(1e-1)  # 1e-5 times 10 four times: 5 attempts
    assert torch.all(baseline.coeffs[1] == 0)
    values = baseline.predict(obs, masks)
    assert torch.isfinite(values).all() and torch.all(values[1] == 0)


def test_batched_fit_equals_per_task_fits():
    obs, rewards, _, masks = _random_batch(n_tasks=4)
    returns = discounted_returns(rewards, masks, 0.99)
    batched = LinearFeatureBaseline().fit(obs, returns, masks)
    for task in range(4):
        one = slice(task, task + 1)
        single = LinearFeatureBaseline().fit(obs[one], returns[one], masks[one])
        torch.testing.assert_close(batched.coeffs[one], single.coeffs, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(
            batched.predict(obs, masks)[one], single.predict(obs[one], masks[one])
        )


def test_baseline_input_errors():
    obs, rewards, _, masks = _random_batch()
    with pytest.raises(RuntimeError, match="before fit"):
        LinearFeatureBaseline().predict(obs, masks)
    with pytest.raises(ValueError, match="returns"):
        LinearFeatureBaseline().fit(obs, rewards[:, :, :-1], masks)
    baseline = LinearFeatureBaseline().fit(obs, rewards, masks)
    with pytest.raises(ValueError, match="coefficients"):
        baseline.predict(obs[:2], masks[:2])


# ----------------------------------------------------------------------------- trajectories


def _trajectories(discrete=False):
    obs, rewards, _, masks = _random_batch(n_tasks=2, episodes=3, horizon=5)
    lengths = masks.sum(-1).long()
    if discrete:
        actions = torch.zeros(2, 3, 5, dtype=torch.long)
    else:
        actions = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    return Trajectories(obs, actions, rewards, torch.zeros_like(rewards), masks, lengths)


@pytest.mark.parametrize("discrete", [False, True])
def test_trajectories_properties(discrete):
    traj = _trajectories(discrete).validate()
    assert (traj.num_tasks, traj.num_episodes, traj.horizon, traj.obs_dim) == (2, 3, 5, 2)
    assert traj.discrete_actions == discrete
    assert traj.num_steps() == int(traj.masks.sum())
    torch.testing.assert_close(traj.episode_returns(), (traj.rewards * traj.masks).sum(-1))
    # A NamedTuple is a pytree: vmap slices every field along the task axis.
    per_task = torch.func.vmap(lambda t: Trajectories(*t).episode_returns())(tuple(traj))
    torch.testing.assert_close(per_task, traj.episode_returns())


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("observations", lambda t: t.observations[..., 0]),
        ("rewards", lambda t: t.rewards[:, :, :-1]),
        ("log_probs", lambda t: t.log_probs[:1]),
        ("masks", lambda t: t.masks.unsqueeze(-1)),
        ("actions", lambda t: t.actions[:, :2]),
        ("actions", lambda t: t.actions[..., 0]),  # float actions without an action axis
        ("actions", lambda t: t.actions.long()),  # integer actions with an action axis
        ("rewards", lambda t: t.rewards.long()),
        ("lengths", lambda t: t.lengths[:, :2]),
        ("lengths", lambda t: t.lengths.float()),
        ("lengths", lambda t: t.lengths + 10),
        ("masks", lambda t: torch.ones_like(t.masks)),
        ("log_probs", lambda t: t.log_probs.to("meta")),
        ("rewards", lambda t: t.rewards.tolist()),
    ],
)
def test_trajectories_validation_names_the_field(field, bad):
    traj = _trajectories()
    broken = traj._replace(**{field: bad(traj)})
    with pytest.raises(ValueError, match=f"Trajectories.{field}"):
        broken.validate()


def test_trajectories_to_device():
    traj = _trajectories()
    assert traj.to("cpu").observations is traj.observations
    moved = traj.to("meta")
    assert isinstance(moved, Trajectories)
    assert all(tensor.device.type == "meta" for tensor in moved)
    assert moved.actions.shape == traj.actions.shape
