"""N-way K-shot classification episodes drawn from a class-indexed image array."""

from __future__ import annotations

import numpy as np
import torch

from rlmaml.supervised.tasks import TaskBatch


class EpisodeSampler:
    """Samples N-way K-shot classification tasks, as in the few-shot Omniglot benchmark.

    Each task draws ``ways`` distinct classes and, per class, ``shots + query_shots`` distinct
    drawings: the first ``shots`` form the support set, the rest the query set. The classes are
    drawn in random order and labelled ``0 .. ways-1`` in that order, so the class-to-label map
    is a fresh random permutation in every task; a model therefore cannot memorise labels and
    has to learn them from the support set. Examples are ordered by label (all shots of label
    0, then label 1, ...), which does not matter to a full-batch inner update.

    Args:
        images: Array of shape ``[n_classes, n_per_class, H, W]``. ``uint8`` images are scaled
            by 1/255; float images are taken to be in [0, 1] already.
        ways: Classes per task (N).
        shots: Support examples per class (K).
        query_shots: Query examples per class.
        rotate: If True, rotate each sampled class by a random multiple of 90 degrees (the
            same rotation for all its drawings in a task). A rotated character acts as a new
            class, the augmentation of the MAML paper. Needs square images.

    Raises:
        ValueError: If the array is not 4-D, a count is below 1, there are fewer than ``ways``
            classes or fewer than ``shots + query_shots`` drawings per class, or ``rotate`` is
            set for non-square images.
    """

    def __init__(
        self,
        images: np.ndarray,
        ways: int,
        shots: int,
        query_shots: int,
        rotate: bool = False,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(
                f"images must have shape [n_classes, n_per_class, H, W], got {images.shape}"
            )
        n_classes, n_per_class, height, width = images.shape
        for name, value in (("ways", ways), ("shots", shots), ("query_shots", query_shots)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if ways > n_classes:
            raise ValueError(f"ways={ways} exceeds the {n_classes} classes available")
        if shots + query_shots > n_per_class:
            raise ValueError(
                f"shots + query_shots = {shots + query_shots} exceeds the {n_per_class} "
                "examples per class"
            )
        if rotate and height != width:
            raise ValueError(f"rotate=True needs square images, got {height}x{width}")
        self.images = images
        self.ways = ways
        self.shots = shots
        self.query_shots = query_shots
        self.rotate = rotate

    def sample(self, n_tasks: int, rng: np.random.Generator) -> TaskBatch:
        """Draws a batch of tasks.

        Args:
            n_tasks: Number of tasks.
            rng: Source of randomness; the same generator state gives the same batch.

        Returns:
            A batch with ``support_x`` float32 ``[T, ways*shots, 1, H, W]`` in [0, 1],
            ``support_y`` int64 ``[T, ways*shots]`` and the query set likewise with
            ``query_shots`` per class.

        Raises:
            ValueError: If ``n_tasks < 1``.
        """
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        n_classes, n_per_class, height, width = self.images.shape
        per_class = self.shots + self.query_shots
        # Sorting uniform noise gives an independent random permutation per row: the first
        # entries are distinct classes per task and distinct drawings per class.
        classes = np.argsort(rng.random((n_tasks, n_classes)), axis=1)[:, : self.ways]
        drawings = np.argsort(rng.random((n_tasks, self.ways, n_per_class)), axis=2)
        x = self.images[classes[..., None], drawings[..., :per_class]]  # [T, ways, per_class, H, W]
        if self.rotate:
            quarter_turns = rng.integers(0, 4, size=(n_tasks, self.ways))
            for k in (1, 2, 3):
                selected = quarter_turns == k
                x[selected] = np.rot90(x[selected], k, axes=(-2, -1))
        x = x.astype(np.float32)
        if self.images.dtype == np.uint8:
            x /= 255.0
        x_t = torch.from_numpy(x).unsqueeze(3)  # channel axis: [T, ways, per_class, 1, H, W]
        label_of_class = torch.arange(self.ways)
        return TaskBatch(
            support_x=x_t[:, :, : self.shots].reshape(n_tasks, -1, 1, height, width),
            support_y=label_of_class.repeat_interleave(self.shots).repeat(n_tasks, 1),
            query_x=x_t[:, :, self.shots :].reshape(n_tasks, -1, 1, height, width),
            query_y=label_of_class.repeat_interleave(self.query_shots).repeat(n_tasks, 1),
        )
