"""Multi-process sampler: a pool of worker processes, each running its own policy and envs.

:class:`ProcessSampler` implements the :class:`~rlmaml.rl.samplers.Sampler` interface for
environments whose step is expensive (MuJoCo): every worker process owns a copy of the policy
and a :class:`~rlmaml.rl.samplers.VectorizedSampler` over its own environments (the natively
batched twin of a MuJoCo family, see :mod:`envs.batched_locomotion`, or a Gymnasium pool), so
stepping has one implementation and a whole sampling phase costs one round trip per worker
(request out, trajectories back), not one per time step. For cheap environments such as
Navigation2D the in-process sampler is faster: there is nothing to parallelise that outweighs
the pickling and the process hops.

A phase is split between workers by whole tasks, and each worker samples its tasks with
``VectorizedSampler.sample(..., first_task=..., phase_tasks=...)``, which uses the phase's own
action noise and reset seeds sliced to those tasks, evaluates the policy laid out as the whole
phase and zeroes padding steps, so the trajectories are identical to
:class:`~rlmaml.rl.samplers.VectorizedSampler`'s for the same seed and parameters, whatever the
number of workers, in every field, padding included.

Workers are started with an explicit ``spawn`` or ``forkserver`` context (never ``fork``: the
parent may hold threads, CUDA or OpenMP state) and talk to the parent over pipes with plain
pickled bytes, so no thread is involved anywhere. Every wait has a deadline: a worker that dies
during a phase is replaced and its share re-sampled once; a worker that hangs is terminated;
either way no call waits forever, and the error names the worker and the reason.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import os
import pickle
import signal
import time
import traceback
import weakref
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from envs.protocol import Task
from rlmaml.core.params import Params, expand_params
from rlmaml.rl.samplers import Sampler, VectorizedSampler, check_request
from rlmaml.rl.trajectories import Trajectories

_HELLO = "hello"
_READY = "ready"
_OK = "ok"
_ERROR = "error"

_STOP_GRACE_S = 2.0
"""How long a stopping worker may take to exit by itself before it is terminated (then killed)."""


def _worker_main(conn: Connection) -> None:
    """A worker process: build the policy and envs once, then serve one request per phase.

    The worker says ``(_HELLO, None)`` as soon as it runs, then receives its set-up, ``(env_id,
    env_kwargs, policy_bytes, worker_imports)``, over the pipe (see :meth:`ProcessSampler._start`
    for why not as arguments). A request is ``(params, tasks, episodes_per_task,
    episode_counts, seed, first_task, phase_tasks)``: the tasks ``first_task...`` of a phase of
    ``phase_tasks`` tasks, sampled by a plain :class:`~rlmaml.rl.samplers.VectorizedSampler`
    told its place in the phase.
    Replies ``(_READY, horizon)`` after start-up, then ``(_OK, trajectories)`` per request; any
    exception is replied as ``(_ERROR, traceback text)`` (a start-up error ends the worker). The
    worker exits when the parent closes its end of the pipe or goes away. Ctrl-C is ignored: the
    parent decides when workers stop, so an interrupted training run can finish its phase. Torch
    runs single-threaded: the parallelism is the processes, and intra-op threads on cores shared
    with other workers only slow every small tensor operation down.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        conn.send_bytes(pickle.dumps((_HELLO, None)))
        env_id, env_kwargs, policy_bytes, worker_imports = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    try:
        for module in worker_imports:
            importlib.import_module(module)
        policy = torch.load(io.BytesIO(policy_bytes), map_location="cpu", weights_only=False)
        sampler = VectorizedSampler(env_id, policy, env_kwargs)
    except Exception:
        conn.send_bytes(pickle.dumps((_ERROR, traceback.format_exc())))
        return
    with sampler, contextlib.suppress(EOFError, BrokenPipeError):
        conn.send_bytes(pickle.dumps((_READY, sampler.horizon)))
        while True:
            request = conn.recv_bytes()
            try:
                params, tasks, episodes, counts, seed, first, phase_tasks = pickle.loads(request)
                traj = sampler.sample(
                    params,
                    tasks,
                    episodes,
                    seed,
                    episode_counts=counts,
                    first_task=first,
                    phase_tasks=phase_tasks,
                )
                reply: tuple[str, Any] = (_OK, traj)
            except Exception:
                reply = (_ERROR, traceback.format_exc())
            conn.send_bytes(pickle.dumps(reply))


class _Worker(NamedTuple):
    """A live worker process and the parent's end of its pipe."""

    process: BaseProcess
    conn: Connection


class _Failure(NamedTuple):
    """Why a worker gave no usable reply; ``retryable`` for deaths (not exceptions or hangs)."""

    reason: str
    retryable: bool


def _exit_description(exitcode: int | None) -> str:
    """``exitcode`` of a process in words: the signal that killed it, or its exit status."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name} (exit code {exitcode})"
        except ValueError:
            return f"was killed by signal {-exitcode} (exit code {exitcode})"
    return f"exited with code {exitcode}"


def _stop_worker(worker: _Worker) -> int | None:
    """Terminate (then kill) ``worker`` if still running, reap it and free its resources.

    Returns:
        The worker's exit code.
    """
    process = worker.process
    worker.conn.close()
    if process.is_alive():
        process.terminate()
        process.join(_STOP_GRACE_S)
    if process.is_alive():
        process.kill()
    process.join()
    exitcode = process.exitcode
    process.close()
    return exitcode


def _stop_workers(workers: list[_Worker | None]) -> None:
    """Stop every worker of the pool in place: ask politely, then terminate, then kill.

    Closing a worker's pipe makes it close its environments and exit; workers that have not
    exited after :data:`_STOP_GRACE_S` seconds (for example, stuck in a step) are terminated.
    Used by :meth:`ProcessSampler.close` and as its ``weakref.finalize`` callback (so it also
    runs when the sampler is garbage collected or at interpreter exit); safe to call repeatedly.
    """
    live = [worker for worker in workers if worker is not None]
    for worker in live:
        worker.conn.close()
    deadline = time.monotonic() + _STOP_GRACE_S
    running = [worker.process for worker in live]
    while running and (remaining := deadline - time.monotonic()) > 0:
        wait([process.sentinel for process in running], timeout=remaining)
        running = [process for process in running if process.is_alive()]
    for worker in live:
        _stop_worker(worker)
    workers[:] = [None] * len(workers)


@contextlib.contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Run torch single-threaded inside the block, restoring the thread count afterwards.

    The parent's work per phase (slicing parameters, concatenating trajectories) is a few small
    copies; with intra-op threads on busy cores each can take a thousand times longer.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for a worker started inside the block, unless the user
    set a policy; the parent's environment is restored afterwards.

    A ``spawn``-ed worker reads its environment when it starts. OpenMP threads that busy-wait
    after a parallel region take cycles from the other workers on a machine with one worker per
    core: passive waiting made a HalfCheetah phase (40 tasks x 20 episodes, 2 workers on 2
    cores) about 10% faster (0.56 s -> 0.51 s). A ``forkserver`` worker inherits the fork
    server's environment instead, which this does not change.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        yield
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        yield
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def _balanced_bounds(episodes: np.ndarray, parts: int) -> list[int]:
    """Task indices ``0 = b_0 < b_1 < ... < b_parts = T`` that cut tasks with ``episodes[t]``
    episodes into ``parts`` contiguous runs holding about equal numbers of episodes (with equal
    counts, runs differ by at most one task)."""
    num_tasks = len(episodes)
    cumulative = np.cumsum(episodes)
    bounds = [0]
    for k in range(1, parts):
        # The first run end at which at least k / parts of the episodes are in, leaving each
        # later run at least one task.
        end = int(np.searchsorted(cumulative, cumulative[-1] * k / parts)) + 1
        bounds.append(min(max(end, bounds[-1] + 1), num_tasks - (parts - k)))
    bounds.append(num_tasks)
    return bounds


def _task_slice(tensor: Tensor, start: int, stop: int) -> Tensor:
    """A compact CPU copy of tasks ``[start, stop)`` of a stacked parameter tensor.

    A tensor shared by all tasks (stride 0 along the task axis, as ``expand_params`` makes)
    stays shared: one copy, expanded with ``expand_params`` (stride 0 even for a single task), so
    the worker takes the same single-forward-pass path as the in-process sampler did for the
    whole phase, and only one set is pickled.
    """
    tensor = tensor.detach()
    if tensor.stride(0) == 0:
        one = tensor[0].to("cpu", copy=True)
        return expand_params({"": one}, stop - start)[""]
    return tensor[start:stop].to("cpu", copy=True)


class ProcessSampler(Sampler):
    """Samples a phase in worker processes, each owning a policy copy and its own environments.

    A phase of ``T`` tasks is split into contiguous runs of whole tasks, one per worker (at most
    ``T`` workers are used). Each worker gets its tasks, their parameter slices as CPU tensors,
    ``episodes_per_task``, the seed and its place in the phase, runs them with a
    :class:`~rlmaml.rl.samplers.VectorizedSampler`, and sends its trajectories back; the parent
    concatenates them along the task axis. Trajectories equal the in-process sampler's for the
    same seed and parameters, whatever ``num_workers``, in every field (padding steps are zero
    in both). The policy is pickled
    by reference to its class, so the class must be importable in the workers.

    Failures never block a call forever:

    - a worker found dead before a phase (killed between phases) is replaced silently;
    - a worker that dies during a phase (crash, signal) is replaced and its tasks re-sampled
      once, which gives the same trajectories; a second death raises;
    - a worker with no reply within ``timeout_s`` is terminated and the call raises (it would
      most likely hang again); it is replaced at the next call;
    - an exception in a worker raises in the parent with the worker's traceback text.

    Each of these errors is a ``RuntimeError`` naming the worker (index and pid) and the reason.
    :meth:`close` (or leaving a ``with`` block, garbage collection, interpreter exit) stops every
    worker, so no child process outlives the sampler.

    Args:
        env_id: a registered Gymnasium id of a task family.
        policy: the policy module. Each worker gets a CPU copy of it as it is now: tensors that
            the parameters passed to :meth:`sample` do not name (buffers, say) keep these
            values, even if the module changes later.
        env_kwargs: keyword arguments for ``gymnasium.make(env_id, ...)``, in every worker.
        num_workers: worker processes; defaults to ``os.cpu_count()``.
        device: where the returned trajectories go; the policy runs on the CPU in the workers.
        timeout_s: the most seconds a phase may wait for the workers' replies; set it well
            above the longest phase expected (large MuJoCo meta-batches take tens of seconds).
        start_method: ``"spawn"`` or ``"forkserver"`` (``fork`` is not offered: forking a
            process with threads, CUDA or OpenMP state can deadlock the child).
        startup_timeout_s: the most seconds a worker may take to start (import torch and the
            simulator, build its environments).
        worker_imports: modules every worker imports before making its environments, such as
            one that registers ``env_id`` outside the ``envs`` package (with ``spawn`` and
            ``forkserver`` a worker starts from a fresh interpreter).

    Raises:
        ValueError: if ``num_workers < 1``, a timeout is not positive, or ``start_method`` is
            not ``"spawn"`` or ``"forkserver"``.
        RuntimeError: if a worker fails to start (its traceback text is in the message, e.g.
            an unknown ``env_id``) or does not start within ``startup_timeout_s``.
    """

    def __init__(
        self,
        env_id: str,
        policy: nn.Module,
        env_kwargs: dict[str, Any] | None = None,
        num_workers: int | None = None,
        device: torch.device | str = "cpu",
        timeout_s: float = 60.0,
        start_method: Literal["spawn", "forkserver"] = "spawn",
        startup_timeout_s: float = 120.0,
        worker_imports: Sequence[str] = (),
    ) -> None:
        if num_workers is None:
            num_workers = os.cpu_count() or 1
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        if timeout_s <= 0 or startup_timeout_s <= 0:
            raise ValueError(
                f"timeouts must be positive, got timeout_s={timeout_s}, "
                f"startup_timeout_s={startup_timeout_s}"
            )
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        self.env_id = env_id
        self.num_workers = num_workers
        self.device = torch.device(device)
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self._context = get_context(start_method)
        buffer = io.BytesIO()
        torch.save(policy, buffer)
        self._setup = pickle.dumps(
            (env_id, dict(env_kwargs or {}), buffer.getvalue(), tuple(worker_imports))
        )
        self._workers: list[_Worker | None] = [None] * num_workers
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)
        self._horizon = 0
        try:
            self._start(range(num_workers))
        except BaseException:
            self.close()
            raise

    @property
    def horizon(self) -> int:
        """The episode length ``H`` of the returned trajectories (the env's time limit)."""
        return self._horizon

    @property
    def worker_pids(self) -> list[int | None]:
        """The process id of each worker slot (None for a slot awaiting a replacement)."""
        return [None if worker is None else worker.process.pid for worker in self._workers]

    def sample(
        self,
        params: Params,
        tasks: Sequence[Task],
        episodes_per_task: int,
        seed: int,
        *,
        episode_counts: Sequence[int] | None = None,
    ) -> Trajectories:
        """Run ``episodes_per_task`` episodes of every task; see :meth:`Sampler.sample`.

        Raises:
            ValueError: for an invalid request, as :meth:`VectorizedSampler.sample` does.
            RuntimeError: if the sampler is closed, or a worker raised, hung past
                ``timeout_s``, died twice in this phase or could not be restarted.
        """
        if not self._finalizer.alive:
            raise RuntimeError("this ProcessSampler is closed")
        counts = check_request(params, len(tasks), episodes_per_task, seed, episode_counts)
        self._start(
            [
                slot
                for slot, worker in enumerate(self._workers)
                if worker is None or not worker.process.is_alive()
            ]
        )
        with _single_threaded_torch():
            requests = self._requests(params, tasks, episodes_per_task, counts, seed)
        results, failures = self._round_trip(requests, self.timeout_s)
        if failures and all(failure.retryable for failure in failures.values()):
            first_failures = failures
            retry = {slot: requests[slot] for slot in failures}
            self._start(retry)
            more, failures = self._round_trip(retry, self.timeout_s)
            results.update(more)
            failures = {
                slot: failure._replace(
                    reason=f"{first_failures[slot].reason}; its replacement {failure.reason}"
                )
                for slot, failure in failures.items()
            }
        if failures:
            raise RuntimeError(self._report("sampling failed", failures))
        # Each slice was validated by the worker's sampler, and concatenating them along the
        # task axis keeps them valid.
        slices = [results[slot] for slot in sorted(results)]
        with _single_threaded_torch():
            fields = [torch.cat(field) for field in zip(*slices, strict=True)]
        return Trajectories(*fields).to(self.device)

    def close(self) -> None:
        """Stop every worker and wait for it to exit; calling it again does nothing."""
        self._finalizer()

    def _requests(
        self,
        params: Params,
        tasks: Sequence[Task],
        episodes_per_task: int,
        counts: np.ndarray | None,
        seed: int,
    ) -> dict[int, bytes]:
        """The pickled request of each worker slot used: a contiguous run of whole tasks, the
        runs balanced by the episodes they hold."""
        num_tasks = len(tasks)
        used = min(self.num_workers, num_tasks)
        episodes = np.full(num_tasks, episodes_per_task) if counts is None else counts
        bounds = _balanced_bounds(episodes, used)
        requests = {}
        for slot, (start, stop) in enumerate(itertools.pairwise(bounds)):
            params_slice = {name: _task_slice(t, start, stop) for name, t in params.items()}
            slice_tasks = list(tasks[start:stop])
            slice_counts = None if counts is None else counts[start:stop].tolist()
            request = (
                params_slice,
                slice_tasks,
                episodes_per_task,
                slice_counts,
                seed,
                start,
                num_tasks,
            )
            requests[slot] = pickle.dumps(request)
        return requests

    def _start(self, slots: Iterable[int]) -> None:
        """Start a worker in each of ``slots`` (stopping what is left there) and await them.

        A worker gets only its end of the pipe as an argument, says hello once it runs, and is
        then sent its set-up (the policy, the env id and kwargs). Arguments travel in the
        process object that ``spawn`` writes to the child before it runs, and a child that dies
        while starting (a main script without an ``if __name__ == "__main__":`` guard, say)
        leaves that write blocked forever once the object outgrows the pipe's buffer (tens of
        kB: the policy); a message on our own pipe fails instead, and every wait has a deadline.

        Raises:
            RuntimeError: if a worker fails or is too slow to start; it is then stopped.
        """
        slots = list(slots)
        if not slots:
            return
        for slot in slots:
            old = self._workers[slot]
            if old is not None:
                _stop_worker(old)
            parent_conn, child_conn = self._context.Pipe()
            process = self._context.Process(
                target=_worker_main,
                args=(child_conn,),
                name=f"ProcessSampler-worker-{slot}",
                daemon=True,
            )
            with _worker_environment():
                process.start()
            # Only the child may hold its end, so the parent sees EOF if the child dies.
            child_conn.close()
            self._workers[slot] = _Worker(process, parent_conn)
        running, failures = self._collect(slots, self.startup_timeout_s, _HELLO)
        sent, dead = self._send(dict.fromkeys(running, self._setup))
        failures |= dead
        horizons, more = self._collect(sent, self.startup_timeout_s, _READY)
        failures |= more
        if failures:
            for slot in failures:
                if self._workers[slot] is not None:
                    self._discard(slot)
            message = self._report("a worker failed to start", failures)
            if any(failure.retryable for failure in failures.values()):
                message += (
                    "\n(workers start from a fresh interpreter that imports the main script; "
                    "one that dies at once often means the script starts sampling without an "
                    '`if __name__ == "__main__":` guard: see the worker\'s traceback above)'
                )
            raise RuntimeError(message)
        self._horizon = horizons[slots[0]]

    def _worker(self, slot: int) -> _Worker:
        """The worker in ``slot``, which the caller knows to be started."""
        worker = self._workers[slot]
        assert worker is not None, f"worker slot {slot} is empty"
        return worker

    def _round_trip(
        self, requests: dict[int, bytes], timeout_s: float
    ) -> tuple[dict[int, Trajectories], dict[int, _Failure]]:
        """Send each slot its request and collect the trajectories within ``timeout_s``."""
        sent, failures = self._send(requests)
        try:
            results, more = self._collect(sent, timeout_s, _OK)
        except BaseException:
            # Interrupted (Ctrl-C): replies still on their way would be taken for the next
            # phase's, so the workers that got a request are replaced instead.
            for slot in sent:
                if self._workers[slot] is not None:
                    self._discard(slot)
            raise
        return results, failures | more

    def _send(self, messages: dict[int, bytes]) -> tuple[list[int], dict[int, _Failure]]:
        """Send each slot its message; returns the slots reached and the failures of the workers
        found dead (their slots emptied)."""
        sent: list[int] = []
        failures: dict[int, _Failure] = {}
        for slot, message in messages.items():
            try:
                self._worker(slot).conn.send_bytes(message)
            except OSError:
                failures[slot] = self._remove(slot, "died", retryable=True)
            else:
                sent.append(slot)
        return sent, failures

    def _collect(
        self, slots: list[int], timeout_s: float, expected: str
    ) -> tuple[dict[int, Any], dict[int, _Failure]]:
        """Await one reply from each of ``slots`` for at most ``timeout_s`` seconds in all.

        Waits on the pipes and on the process sentinels together, so a worker's death is seen
        at once. Workers that died, and workers still silent at the deadline, are stopped and
        their slots emptied for replacements.

        Returns:
            ``(payloads, failures)``: the payload of each ``expected`` reply by slot, and why
            each other slot failed.
        """
        payloads: dict[int, Any] = {}
        failures: dict[int, _Failure] = {}
        pending = {slot: self._worker(slot) for slot in slots}
        deadline = time.monotonic() + timeout_s
        while pending:
            handles = [h for w in pending.values() for h in (w.conn, w.process.sentinel)]
            ready = set(wait(handles, timeout=max(deadline - time.monotonic(), 0.0)))
            if not ready:
                reason = f"gave no reply within {timeout_s:g} s and was terminated"
                for slot in pending:
                    failures[slot] = self._remove(slot, reason, retryable=False)
                break
            for slot, worker in list(pending.items()):
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                del pending[slot]
                try:
                    kind, payload = pickle.loads(worker.conn.recv_bytes())
                except (EOFError, OSError):
                    failures[slot] = self._remove(slot, "died", retryable=True)
                    continue
                if kind == expected:
                    payloads[slot] = payload
                else:
                    reason = f"(pid {worker.process.pid}) raised an exception:\n{payload}"
                    failures[slot] = _Failure(reason, retryable=False)
        return payloads, failures

    def _discard(self, slot: int) -> int | None:
        """Stop the worker of ``slot`` and empty the slot; returns the worker's exit code."""
        worker = self._worker(slot)
        self._workers[slot] = None
        return _stop_worker(worker)

    def _remove(self, slot: int, what: str, retryable: bool) -> _Failure:
        """:meth:`_discard` the worker of ``slot``, saying what happened and how it ended."""
        pid = self._worker(slot).process.pid
        exit_description = _exit_description(self._discard(slot))
        return _Failure(f"(pid {pid}) {what}: it {exit_description}", retryable)

    def _report(self, what: str, failures: dict[int, _Failure]) -> str:
        """An error message naming each failed worker and its reason."""
        lines = [f"ProcessSampler ({self.env_id}): {what}:"]
        lines += [f"worker {slot} {failure.reason}" for slot, failure in sorted(failures.items())]
        return "\n".join(lines)
