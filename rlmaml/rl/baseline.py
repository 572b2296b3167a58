"""The linear feature baseline of the MAML paper, fitted to all tasks of a meta-batch at once."""

from __future__ import annotations

import torch


def linear_features(observations: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Per-step features ``[o, o**2, t/100, (t/100)**2, (t/100)**3, 1]`` of the MAML baseline.

    ``o`` is the observation clipped to ``[-10, 10]`` and ``t`` the step index within the
    episode.

    Args:
        observations: ``[..., obs_dim]`` observations.
        steps: ``[...]`` the step index of each observation within its episode.

    Returns:
        ``[..., 2 * obs_dim + 4]`` features in the observations' dtype.
    """
    o = observations.clamp(-10.0, 10.0)
    t = (steps.to(observations.dtype) / 100.0).unsqueeze(-1)
    return torch.cat([o, o.square(), t, t.square(), t.pow(3), torch.ones_like(t)], dim=-1)


def _valid_step_features(
    observations: torch.Tensor, masks: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """float64 :func:`linear_features` of each task's valid steps (``[n_t, n_features]``, in
    episode and time order) and the bool mask ``[T, E, H]`` of those steps.

    Only valid steps are featurised: a batch counted in time steps holds many short episodes,
    each padded to the horizon, and featurising the padding cost several times the fit.
    """
    valid = masks > 0
    steps = torch.arange(valid.shape[2], device=valid.device).expand(valid.shape)[valid]
    features = linear_features(observations[valid].double(), steps)
    per_task = valid.flatten(1).sum(dim=1).tolist()
    return list(features.split(per_task)), valid


class LinearFeatureBaseline:
    """State-value baseline linear in :func:`linear_features`, with one fit per task.

    For each task, the coefficients solve the ridge least-squares problem
    ``(X^T X + c I) w = X^T R`` over the task's valid steps, with ``R`` the discounted returns
    (as in rllab's ``LinearFeatureBaseline``, used by the paper). All tasks are solved in one
    batched float64 Cholesky factorisation. A task whose system is not positive definite or
    whose solution is not finite is retried with ``c`` multiplied by 10, up to ``attempts``
    solves in all (the reference code's 5 tries: ``c`` from 1e-5 to 1e-1); only failed tasks
    are re-solved. A task that fails every attempt (e.g. non-finite returns) gets a zero
    baseline and is flagged in :attr:`failed`, so callers can log it; nothing is printed.

    Args:
        reg_coeff: Initial ridge coefficient ``c``.
        attempts: Maximum number of solves per task, the ridge coefficient growing tenfold
            after each failure.

    Attributes:
        coeffs: float64 ``[T, n_features]`` coefficients of the last fit, ``None`` before.
        ridge: float64 ``[T]`` ridge coefficient of each task's last attempt in the last fit.
        failed: bool ``[T]``, tasks whose fit failed every attempt and fell back to zero.
    """

    def __init__(self, reg_coeff: float = 1e-5, attempts: int = 5) -> None:
        if reg_coeff < 0:
            raise ValueError(f"reg_coeff must be >= 0, got {reg_coeff}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.reg_coeff = reg_coeff
        self.attempts = attempts
        self.coeffs: torch.Tensor | None = None
        self.ridge: torch.Tensor | None = None
        self.failed: torch.Tensor | None = None

    def fit(
        self, observations: torch.Tensor, returns: torch.Tensor, masks: torch.Tensor
    ) -> LinearFeatureBaseline:
        """Fits one coefficient vector per task to the returns of its valid steps.

        Args:
            observations: ``[T, E, H, obs_dim]`` observations.
            returns: ``[T, E, H]`` discounted returns (see
                :func:`rlmaml.rl.returns.discounted_returns`); padding entries are ignored.
            masks: ``[T, E, H]`` step masks (1 valid, 0 padding).

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: If the shapes do not match.
        """
        _check_shapes(observations, masks, returns=returns)
        features, valid = _valid_step_features(observations, masks)
        targets = returns[valid].double().split([len(f) for f in features])
        gram = torch.stack([f.mT @ f for f in features])
        rhs = torch.stack([f.mT @ y.unsqueeze(-1) for f, y in zip(features, targets, strict=True)])
        n_tasks, n_features = rhs.shape[:2]
        eye = torch.eye(n_features, dtype=gram.dtype, device=gram.device)

        coeffs = torch.zeros(n_tasks, n_features, dtype=gram.dtype, device=gram.device)
        ridge = torch.full((n_tasks,), self.reg_coeff, dtype=gram.dtype, device=gram.device)
        pending = torch.arange(n_tasks, device=gram.device)
        reg = self.reg_coeff
        for _ in range(self.attempts):
            if pending.numel() == 0:
                break
            ridge[pending] = reg
            factor, info = torch.linalg.cholesky_ex(gram[pending] + reg * eye)
            solution = torch.cholesky_solve(rhs[pending], factor).squeeze(-1)
            solved = (info == 0) & solution.isfinite().all(dim=-1)
            coeffs[pending[solved]] = solution[solved]
            pending = pending[~solved]
            reg *= 10.0
        failed = torch.zeros(n_tasks, dtype=torch.bool, device=gram.device)
        failed[pending] = True

        self.coeffs, self.ridge, self.failed = coeffs, ridge, failed
        return self

    def predict(self, observations: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Baseline values of each task's fitted coefficients on its own observations.

        Args:
            observations: ``[T, E, H, obs_dim]`` observations of the same ``T`` tasks (in the
                same order) as the last :meth:`fit`.
            masks: ``[T, E, H]`` step masks (1 valid, 0 padding).

        Returns:
            ``[T, E, H]`` values in the observations' dtype, 0 at padding steps.

        Raises:
            RuntimeError: If the baseline has not been fitted.
            ValueError: If the shapes do not match each other or the fitted coefficients.
        """
        if self.coeffs is None:
            raise RuntimeError("LinearFeatureBaseline.predict called before fit")
        _check_shapes(observations, masks)
        n_tasks, n_features = self.coeffs.shape
        if observations.shape[0] != n_tasks or 2 * observations.shape[-1] + 4 != n_features:
            raise ValueError(
                f"observations {tuple(observations.shape)} do not match the fitted coefficients "
                f"{tuple(self.coeffs.shape)} ([T, 2 * obs_dim + 4])"
            )
        features, valid = _valid_step_features(observations, masks)
        coeffs = self.coeffs.to(observations.device)
        values = torch.zeros(valid.shape, dtype=coeffs.dtype, device=observations.device)
        values[valid] = torch.cat([f @ c for f, c in zip(features, coeffs, strict=True)])
        return values.to(observations.dtype)


def _check_shapes(observations: torch.Tensor, masks: torch.Tensor, **others: torch.Tensor) -> None:
    """Raises a ValueError unless observations are ``[T, E, H, D]`` and the rest ``[T, E, H]``."""
    if observations.dim() != 4:
        raise ValueError(
            f"observations must have shape [T, E, H, obs_dim], got {tuple(observations.shape)}"
        )
    leading = tuple(observations.shape[:3])
    for name, tensor in {"masks": masks, **others}.items():
        if tuple(tensor.shape) != leading:
            raise ValueError(f"{name} must have shape {leading}, got {tuple(tensor.shape)}")
