"""The meta-RL objective: REINFORCE, Fisher-vector products, conjugate gradient and TRPO."""

import pytest
import torch

from rlmaml.core import expand_params, module_params
from rlmaml.rl.distributions import Categorical, DiagGaussian
from rlmaml.rl.losses import PolicyBatch, reinforce_loss
from rlmaml.rl.maml import OuterBatch, PolicyMAML
from rlmaml.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, per_task_distribution
from rlmaml.rl.trpo import TRPOSettings, conjugate_gradient, trpo_step

pytestmark = pytest.mark.usefixtures("float64")


def _batch(tasks, episodes, horizon, obs_dim, act_dim, seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.ones(tasks, episodes, horizon)
    masks[0, 0, horizon // 2 :] = 0
    actions = torch.randn(tasks, episodes, horizon, act_dim, generator=g)
    return PolicyBatch(
        observations=torch.randn(tasks, episodes, horizon, obs_dim, generator=g),
        actions=actions,
        advantages=torch.randn(tasks, episodes, horizon, generator=g),
        log_probs=torch.randn(tasks, episodes, horizon, generator=g) * 0.1 - 2,
        masks=masks,
    )


def _small_maml(first_order=False):
    """A seeded 2-D Gaussian policy with two hidden layers of 8, its MAML and its parameters."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(8, 8))
    maml = PolicyMAML(policy, inner_lr=0.1, first_order=first_order)
    params = {k: v.detach().clone().requires_grad_() for k, v in module_params(policy).items()}
    return policy, maml, params


def _outer_batch(policy, maml, params, support=None, query=None):
    support = _batch(3, 4, 6, 2, 2, seed=1) if support is None else support
    query = _batch(3, 4, 6, 2, 2, seed=2) if query is None else query
    with torch.no_grad():
        adapted = maml.adapted(params, (support,))
        behaviour = per_task_distribution(policy, adapted, query.observations).detach()
    return OuterBatch((support,), query, behaviour)


def _ragged(batch, lengths):
    """``batch`` with episode ``(t, e)`` cut to ``lengths[t][e]`` steps (padding zeroed)."""
    lengths = torch.tensor(lengths)
    horizon = batch.masks.shape[-1]
    masks = (torch.arange(horizon) < lengths.unsqueeze(-1)).to(batch.masks.dtype)

    def cut(field):
        return field * masks.reshape(*masks.shape, *[1] * (field.dim() - 3))

    return PolicyBatch(*(cut(field) for field in batch[:-1]), masks)


def test_packing_moves_each_tasks_steps_in_order_to_the_front_and_drops_unneeded_rows():
    batch = _ragged(_batch(2, 4, 5, 3, 2, seed=0), [[5, 2, 0, 1], [3, 3, 3, 0]])
    packed = batch.packed()
    # 8 and 9 valid steps fit in two rows of 5.
    assert packed.masks.shape == (2, 2, 5)
    assert packed.observations.shape == (2, 2, 5, 3)
    for task in range(2):
        valid = batch.masks[task].reshape(-1) == 1
        count = int(valid.sum())
        kept = packed.masks[task].reshape(-1)
        assert kept[:count].eq(1).all() and kept[count:].eq(0).all()
        for field, original in zip(packed, batch, strict=True):
            flat = original[task].reshape(original.shape[1] * original.shape[2], -1)
            torch.testing.assert_close(
                field[task].reshape(-1, flat.shape[1])[:count], flat[valid], rtol=0, atol=0
            )


def test_a_batch_without_droppable_rows_is_not_repacked():
    full = _batch(2, 3, 4, 2, 2, seed=0)  # one half-empty episode: no whole row to drop
    assert full.packed() is full


@pytest.mark.parametrize("first_order", [False, True])
def test_packed_batches_give_the_same_objective_kl_and_fisher_products(first_order):
    policy, maml, params = _small_maml(first_order)
    lengths = [[6, 1, 2, 0], [3, 3, 0, 0], [6, 5, 0, 1]]
    support = _ragged(_batch(3, 4, 6, 2, 2, seed=1), lengths)
    query = _ragged(_batch(3, 4, 6, 2, 2, seed=2), lengths[::-1])
    padded = _outer_batch(policy, maml, params, support, query)
    packed = _outer_batch(policy, maml, params, support.packed(), query.packed())
    assert packed.query.masks.shape[1] < padded.query.masks.shape[1]
    for ours, reference in zip(
        maml.surrogate_and_kl(params, packed), maml.surrogate_and_kl(params, padded), strict=True
    ):
        torch.testing.assert_close(ours, reference)
    vector = {k: torch.randn_like(p) for k, p in params.items()}
    ours = maml.fisher_vector_product(params, packed)(vector)
    reference = maml.fisher_vector_product(params, padded)(vector)
    for name in params:
        torch.testing.assert_close(ours[name], reference[name], msg=name)


def test_reinforce_gradient_matches_the_analytic_one_on_a_bandit():
    """One-step bandit, Gaussian policy N(mu, sigma): d/dmu E[-log pi(a) A] = -(a - mu)/s^2 A."""
    policy = GaussianMLPPolicy(1, 1, hidden=(4,))
    params = {k: v.detach().clone().requires_grad_() for k, v in module_params(policy).items()}
    obs = torch.zeros(1, 5, 1)
    actions = torch.tensor([[[0.3], [-0.2], [1.0], [0.0], [0.5]]])
    advantages = torch.tensor([[1.0, -2.0, 0.5, 3.0, -1.0]])
    batch = PolicyBatch(obs, actions, advantages, torch.zeros(1, 5), torch.ones(1, 5))
    loss = reinforce_loss(policy)(params, batch)
    (grad_log_std,) = torch.autograd.grad(loss, params["log_std"], retain_graph=True)
    with torch.no_grad():
        mu = policy.mean(torch.zeros(1))
        sigma = params["log_std"].exp()
    z2 = ((actions[0, :, 0] - mu) / sigma) ** 2
    # d/dlog_std of log N(a; mu, sigma) = z^2 - 1
    expected = -((z2 - 1) * advantages[0]).mean()
    torch.testing.assert_close(grad_log_std, expected.reshape(1))


@pytest.mark.parametrize("first_order", [False, True])
def test_fisher_vector_product_equals_the_kl_hessian(first_order):
    policy, maml, params = _small_maml(first_order)
    batch = _outer_batch(policy, maml, params)
    _, kl = maml.surrogate_and_kl(params, batch)
    grads = torch.autograd.grad(kl, list(params.values()), create_graph=True)
    vector = {k: torch.randn_like(p) for k, p in params.items()}
    dot = sum((g * vector[k]).sum() for g, k in zip(grads, params, strict=True))
    hessian_vector = torch.autograd.grad(dot, list(params.values()))
    product = maml.fisher_vector_product(params, batch)(vector)
    for (name, ours), reference in zip(product.items(), hessian_vector, strict=True):
        torch.testing.assert_close(ours, reference, msg=name)


def test_categorical_fisher_product_equals_the_kl_hessian_in_the_logits():
    logits = torch.randn(5, 4)
    tangent = torch.randn(5, 4)
    q = logits.clone().requires_grad_()
    kl = Categorical(logits).kl(Categorical(q)).sum()
    (g,) = torch.autograd.grad(kl, q, create_graph=True)
    (hv,) = torch.autograd.grad((g * tangent).sum(), q)
    ours = Categorical(logits).fisher_product(Categorical(tangent)).logits
    torch.testing.assert_close(ours, hv)


def test_gaussian_kl_and_log_prob_match_torch_distributions():
    mean, log_std = torch.randn(3, 2), torch.randn(3, 2) * 0.3
    other = DiagGaussian(torch.randn(3, 2), torch.randn(3, 2) * 0.3)
    ours = DiagGaussian(mean, log_std)
    ref = torch.distributions.Normal(mean, log_std.exp())
    ref_other = torch.distributions.Normal(other.mean, other.log_std.exp())
    actions = torch.randn(3, 2)
    torch.testing.assert_close(ours.log_prob(actions), ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(
        ours.kl(other), torch.distributions.kl_divergence(ref, ref_other).sum(-1)
    )


def test_conjugate_gradient_solves_a_small_spd_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    spd = a @ a.T + 6 * torch.eye(6)
    b = torch.randn(6, generator=g)
    x = conjugate_gradient(lambda v: spd @ v, b, iters=6)
    torch.testing.assert_close(x, torch.linalg.solve(spd, b))


def test_trpo_step_improves_the_surrogate_within_the_kl_bound():
    policy, maml, params = _small_maml()
    batch = _outer_batch(policy, maml, params)
    loss, _ = maml.surrogate_and_kl(params, batch)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    before = {k: v.detach().clone() for k, v in params.items()}
    settings = TRPOSettings(max_kl=0.001)
    result = trpo_step(
        params,
        lambda p: maml.surrogate_and_kl(p, batch),
        grads,
        maml.fisher_vector_product(params, batch),
        settings,
        loss.item(),
    )
    assert result.step_fraction > 0
    assert result.loss_after < result.loss_before
    with torch.no_grad():
        new_loss, new_kl = maml.surrogate_and_kl(params, batch)
    assert 0 < new_kl.item() <= settings.max_kl
    assert new_loss.item() == pytest.approx(result.loss_after)
    assert any(not torch.equal(before[k], params[k]) for k in params)


def test_vmap_and_loop_agree_on_the_post_adaptation_surrogate():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(8,))
    params = {k: v.detach().clone().requires_grad_() for k, v in module_params(policy).items()}
    results = []
    for vectorize in (True, False):
        maml = PolicyMAML(policy, inner_lr=0.1, vectorize=vectorize)
        batch = _outer_batch(policy, maml, params)
        loss, kl = maml.surrogate_and_kl(params, batch)
        results.append((loss, torch.autograd.grad(loss, list(params.values()))))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_categorical_policy_acts_per_task():
    policy = CategoricalMLPPolicy(3, 4, hidden=(8,))
    params = expand_params(module_params(policy), 2)
    params = {k: v.clone() for k, v in params.items()}
    with torch.no_grad():
        params["logits.2.bias"][1] += torch.tensor([10.0, 0, 0, 0])
    dist = per_task_distribution(policy, params, torch.randn(2, 5, 3))
    actions = dist.sample(torch.rand(2, 5))
    assert (actions[1] == 0).all()


@pytest.mark.parametrize(
    "make", [lambda: GaussianMLPPolicy(3, 2, (8, 8)), lambda: CategoricalMLPPolicy(3, 4, (8,))]
)
def test_per_task_mlp_path_equals_vmap(make):
    from rlmaml.core import functional_forward

    policy = make()
    stacked = {k: v + 0.1 * torch.randn(4, *v.shape) for k, v in module_params(policy).items()}
    obs = torch.randn(4, 5, 3)
    fast = per_task_distribution(policy, stacked, obs)
    reference = torch.func.vmap(lambda p, o: functional_forward(policy, p, o))(stacked, obs)
    for ours, theirs in zip(fast, reference, strict=True):
        torch.testing.assert_close(ours, theirs.expand_as(ours))


def test_policies_start_from_the_paper_codes_initialisation():
    torch.manual_seed(0)
    paper = GaussianMLPPolicy(2, 2, hidden=(100, 100))
    for layer in (m for m in paper.mean if isinstance(m, torch.nn.Linear)):
        fan_out, fan_in = layer.weight.shape
        bound = (6.0 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound
        assert torch.count_nonzero(layer.bias) == 0
    torch.manual_seed(0)
    default = GaussianMLPPolicy(2, 2, hidden=(100, 100), init="torch")
    first = default.mean[0]
    assert first.weight.abs().max() > (6.0 / 102) ** 0.5  # nn.Linear's 1/sqrt(2) bound
    assert torch.count_nonzero(first.bias) > 0
    with pytest.raises(ValueError, match="init must be"):
        CategoricalMLPPolicy(2, 3, init="orthogonal")
