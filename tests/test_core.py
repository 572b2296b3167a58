"""The MAML core against hand-derived gradients and formulas, in float64."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rlmaml.core import (
    MetaLearner,
    adapt,
    functional_forward,
    maml_losses,
    module_params,
    reptile_direction,
    stack_params,
    unstack_params,
)

pytestmark = pytest.mark.usefixtures("float64")


def _linear_regression_tasks(n_tasks=4, n=6, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n_tasks, n, dim, generator=g)
    ys = torch.randn(n_tasks, n, generator=g)
    xq = torch.randn(n_tasks, n, dim, generator=g)
    yq = torch.randn(n_tasks, n, generator=g)
    return (xs, ys), (xq, yq)


def _mse(params, data):
    x, y = data
    return ((x @ params["w"] - y) ** 2).mean()


def _hand_maml_grad(w, support, query, alpha, first_order):
    """d/dw of mean_i L_q,i(w - alpha * grad L_s,i(w)) for least squares, derived by hand."""
    (xs, ys), (xq, yq) = support, query
    grads = []
    for i in range(xs.shape[0]):
        n = xs.shape[1]
        a_s = 2.0 / n * xs[i].T @ xs[i]
        w_adapted = w - alpha * 2.0 / n * xs[i].T @ (xs[i] @ w - ys[i])
        outer = 2.0 / n * xq[i].T @ (xq[i] @ w_adapted - yq[i])
        jac = torch.eye(len(w)) if first_order else torch.eye(len(w)) - alpha * a_s
        grads.append(jac.T @ outer)
    return torch.stack(grads).mean(0)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("vectorize", [True, False])
def test_meta_gradient_matches_hand_derivation(first_order, vectorize):
    support, query = _linear_regression_tasks()
    w = torch.randn(3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    losses = maml_losses(
        {"w": w},
        _mse,
        support,
        query,
        steps=1,
        lr=0.1,
        first_order=first_order,
        vectorize=vectorize,
    )
    (grad,) = torch.autograd.grad(losses.mean(), w)
    expected = _hand_maml_grad(w.detach(), support, query, 0.1, first_order)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_first_order_differs_from_second_order_when_curvature_matters():
    support, query = _linear_regression_tasks()
    w = torch.randn(3, requires_grad=True)
    grads = [
        torch.autograd.grad(
            maml_losses({"w": w}, _mse, support, query, steps=2, lr=0.1, first_order=fo).mean(), w
        )[0]
        for fo in (False, True)
    ]
    assert (grads[0] - grads[1]).abs().max() > 1e-3


def test_first_order_equals_second_order_for_a_loss_linear_in_the_parameters():
    """No curvature (zero Hessian) means the second-order term vanishes exactly."""

    def linear_loss(params, data):
        x, y = data
        return (x @ params["w"] * y).mean()

    support, query = _linear_regression_tasks()
    w = torch.randn(3, requires_grad=True)
    grads = [
        torch.autograd.grad(
            maml_losses(
                {"w": w}, linear_loss, support, query, steps=3, lr=0.3, first_order=fo
            ).mean(),
            w,
        )[0]
        for fo in (False, True)
    ]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-14)


def test_adapt_zero_steps_is_identity_and_rejects_negative():
    params = {"w": torch.randn(3)}
    assert adapt(params, lambda p: p["w"].sum(), steps=0)["w"] is params["w"]
    with pytest.raises(ValueError, match="steps"):
        adapt(params, lambda p: p["w"].sum(), steps=-1)


def test_per_parameter_step_size_scales_each_entry():
    params = {"w": torch.tensor([1.0, 2.0])}
    lr = {"w": torch.tensor([0.5, 0.0])}
    adapted = adapt(params, lambda p: (p["w"] ** 2).sum(), steps=1, lr=lr)
    torch.testing.assert_close(adapted["w"], torch.tensor([1.0 - 0.5 * 2.0, 2.0]))


def _mlp_and_tasks(n_tasks=5, k=7, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(seed)
    data = [torch.randn(n_tasks, k, 1, generator=g) for _ in range(4)]

    def task_loss(params, task):
        x, y = task
        return F.mse_loss(functional_forward(model, params, x), y)

    return model, task_loss, (data[0], data[1]), (data[2], data[3])


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd"])
def test_vmap_and_loop_give_the_same_meta_gradient(algorithm):
    model, task_loss, support, query = _mlp_and_tasks()
    grads = {}
    for vectorize in (True, False):
        learner = MetaLearner(
            model,
            task_loss,
            algorithm=algorithm,
            inner_steps=2,
            inner_lr=0.05,
            vectorize=vectorize,
        )
        for p in learner.meta_parameters():
            p.grad = None
        learner.meta_backward(support, query)
        grads[vectorize] = [p.grad.clone() for p in learner.meta_parameters()]
    for g_vmap, g_loop in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(g_vmap, g_loop, rtol=1e-9, atol=1e-12)


def test_chunked_vmap_equals_unchunked():
    model, task_loss, support, query = _mlp_and_tasks(n_tasks=7)
    params = module_params(model)
    full = maml_losses(params, task_loss, support, query, steps=1, lr=0.1)
    chunked = maml_losses(params, task_loss, support, query, steps=1, lr=0.1, chunk_size=3)
    torch.testing.assert_close(full, chunked)


def test_reptile_update_matches_its_formula():
    model, task_loss, support, _ = _mlp_and_tasks(n_tasks=3)
    params = {n: p.detach().clone() for n, p in module_params(model).items()}
    direction = reptile_direction(params, task_loss, support, steps=3, lr=0.1)
    for i in range(3):
        task = (support[0][i], support[1][i])
        phi = dict(params)
        for _ in range(3):  # three plain SGD steps, written out
            p = {n: t.clone().requires_grad_() for n, t in phi.items()}
            grads = torch.autograd.grad(task_loss(p, task), list(p.values()))
            phi = {n: phi[n] - 0.1 * g for n, g in zip(p, grads, strict=True)}
        if i == 0:
            mean_phi = {n: t / 3 for n, t in phi.items()}
        else:
            mean_phi = {n: mean_phi[n] + t / 3 for n, t in phi.items()}
    for n in params:
        torch.testing.assert_close(direction[n], params[n] - mean_phi[n])


def test_metasgd_learns_step_sizes_with_the_hand_derived_gradient():
    """d/d(alpha) of L_q(w - alpha * g_s) is -g_q(w') * g_s, entry by entry."""
    support, query = _linear_regression_tasks(n_tasks=1)
    w = torch.randn(3, requires_grad=True)
    alpha = torch.full((3,), 0.1, requires_grad=True)
    loss = maml_losses({"w": w}, _mse, support, query, steps=1, lr={"w": alpha}).mean()
    (grad_alpha,) = torch.autograd.grad(loss, alpha)
    (xs, ys), (xq, yq) = support, query
    g_s = 2.0 / 6 * xs[0].T @ (xs[0] @ w.detach() - ys[0])
    w_adapted = w.detach() - 0.1 * g_s
    g_q = 2.0 / 6 * xq[0].T @ (xq[0] @ w_adapted - yq[0])
    torch.testing.assert_close(grad_alpha, -g_q * g_s)


def test_stack_and_unstack_are_inverse():
    per_task = [{"a": torch.randn(2, 3), "b": torch.randn(4)} for _ in range(3)]
    stacked = stack_params(per_task)
    assert stacked["a"].shape == (3, 2, 3)
    for original, back in zip(per_task, unstack_params(stacked), strict=True):
        for name in original:
            assert torch.equal(original[name], back[name])
    with pytest.raises(ValueError):
        stack_params([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])


def test_learner_rejects_bad_settings():
    model, task_loss, *_ = _mlp_and_tasks()
    with pytest.raises(ValueError, match="algorithm"):
        MetaLearner(model, task_loss, algorithm="mamba")
    with pytest.raises(ValueError, match="inner_lr"):
        MetaLearner(model, task_loss, inner_lr=-0.1)


def test_auto_strategy_picks_one_and_keeps_it():
    model, task_loss, support, query = _mlp_and_tasks()
    learner = MetaLearner(model, task_loss, vectorize="auto")
    learner.meta_backward(support, query)
    assert learner.vectorize in (True, False)


def test_batch_stat_norm_matches_torch_batch_norm_without_running_stats():
    from rlmaml.supervised.models import BatchStatNorm2d

    x = torch.randn(6, 4, 5, 5)
    ours, reference = BatchStatNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        for module in (ours, reference):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-1, 1)
        reference.weight.copy_(ours.weight)
        reference.bias.copy_(ours.bias)
    torch.testing.assert_close(ours(x), reference(x))
