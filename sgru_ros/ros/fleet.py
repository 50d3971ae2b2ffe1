"""Many rosbag2 recordings through the network: one after another in this process, or as tasks of a pool
of Ray actors, each holding one model (``sgru-stereo bags``).

Every output is written to ``OUT_DIR/.partial/NAME`` (the same name: rosbags names the storage file after
its folder) and moved to ``OUT_DIR/NAME`` when complete, so an output folder that exists is complete: a
re-run skips it and does the rest. A Ray worker that dies while it holds a bag (killed, out of memory) is
killed for sure, replaced, its partial output removed and the bag given to a worker again, up to
``max_retries`` times. On a cluster, the input bags and OUT_DIR
must be on a filesystem every node sees.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sqlite3
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..pipeline import StereoPipeline
from .bag import BagOptions, BagSummary, StereoTopics, convert_bag, images_in_window

#: The folder of OUT_DIR where outputs are written until they are complete (removed when empty).
PARTIAL_FOLDER = ".partial"
#: Errors that fail one bag (the others go on); anything else ends the run.
BAG_ERRORS = (ValueError, OSError, MemoryError, sqlite3.Error)


@dataclass(frozen=True)
class BagJob:
    """One input bag and the output folder it becomes (OUT_DIR/<the input's folder name>)."""

    source: Path
    target: Path

    @property
    def partial(self) -> Path:
        """Where the output is written until it is complete."""
        return self.target.parent / PARTIAL_FOLDER / self.target.name


@dataclass
class FleetSummary:
    """What a batch of bags came to."""

    done: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # outputs already there: skipped
    failed: dict[str, str] = field(default_factory=dict)  # bag -> the one-line reason
    retried: Counter = field(default_factory=Counter)  # bag -> times given to a new worker
    sets: int = 0
    processed: int = 0
    skipped: Counter = field(default_factory=Counter)  # sets by reason

    def add(self, job: BagJob, bag: BagSummary) -> None:
        self.done.append(str(job.source))
        self.sets += bag.sets
        self.processed += bag.processed
        self.skipped.update(bag.skipped)

    def lines(self) -> list[str]:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        lines = [f"bags: {len(self.done)} done, {len(self.existing)} skipped (output exists), "
                 f"{len(self.failed)} failed, {sum(self.retried.values())} retried after a worker died",
                 f"sets formed: {self.sets}, processed: {self.processed}, skipped: {skipped}"]
        lines += [f"retried: {bag} ({n} time{'s' if n > 1 else ''})" for bag, n in sorted(self.retried.items())]
        lines += [f"failed: {bag}: {reason}" for bag, reason in sorted(self.failed.items())]
        return lines


def plan_jobs(out_dir: Path, sources: Sequence[str | Path]) -> list[BagJob]:
    """A job per input bag; ValueError (one line) when two inputs would write the same output folder."""
    jobs, seen = [], {}
    for source in map(Path, sources):
        name = source.resolve().name
        if name in seen:
            raise ValueError(f"{seen[name]} and {source} would both write {out_dir / name}: rename one")
        seen[name] = source
        jobs.append(BagJob(source, out_dir / name))
    return jobs


def convert_job(job: BagJob, pipeline: StereoPipeline, topics: StereoTopics, options: BagOptions,
                progress: Callable[[int, int], object] | None = None) -> BagSummary:
    """One bag into its partial folder, renamed to the output when complete (what a dead worker left is
    removed first)."""
    shutil.rmtree(job.partial, ignore_errors=True)
    job.partial.parent.mkdir(exist_ok=True)
    summary = convert_bag(job.source, job.partial, pipeline, topics, options, progress)
    os.rename(job.partial, job.target)
    return summary


def remove_partial(jobs: list[BagJob]) -> None:
    """What the jobs left half-written, and the partial folder once empty."""
    for job in jobs:
        shutil.rmtree(job.partial, ignore_errors=True)
    for folder in {job.partial.parent for job in jobs}:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _pending(jobs: list[BagJob], summary: FleetSummary, log: Callable[[str], None]) -> list[BagJob]:
    """The jobs whose output does not exist yet; the others are skipped with a line."""
    pending = []
    for job in jobs:
        if job.target.exists():
            summary.existing.append(str(job.source))
            log(f"{job.source}: skipped, {job.target} exists")
        else:
            pending.append(job)
    return pending


def _set_counts(jobs: list[BagJob], topics: StereoTopics, options: BagOptions, summary: FleetSummary,
                log: Callable[[str], None]) -> dict[BagJob, int]:
    """Each usable job's sets to handle (for one progress bar over all); a bag that cannot be used fails here,
    before any model loads."""
    counts = {}
    for job in jobs:
        try:
            counts[job] = images_in_window(job.source, topics, options)
        except BAG_ERRORS as err:
            _record(summary, job, None, _one_line(err), log)
    return counts


def run_here(jobs: list[BagJob], make_pipeline: Callable[[], StereoPipeline], topics: StereoTopics,
             options: BagOptions, progress: Callable[[int, int], object] | None = None,
             log: Callable[[str], None] = print) -> FleetSummary:
    """The bags one after another in this process, the model loaded once; progress(sets handled, all sets)."""
    summary = FleetSummary()
    counts = _set_counts(_pending(jobs, summary, log), topics, options, summary, log)
    if not counts:
        return summary
    pipeline = make_pipeline()
    try:
        _convert_here(counts, pipeline, topics, options, summary, progress, log)
    finally:  # a bag cut short by Ctrl-C or a failure leaves nothing half-written
        remove_partial(list(counts))
    return summary


def _convert_here(counts: dict[BagJob, int], pipeline: StereoPipeline, topics: StereoTopics, options: BagOptions,
                  summary: FleetSummary, progress, log: Callable[[str], None]) -> None:
    total, offset = sum(counts.values()), 0
    for job, count in counts.items():
        try:
            bag, reason = convert_job(job, pipeline, topics, options, (lambda done, _, base=offset: progress(
                base + done, total)) if progress else None), ""
        except BAG_ERRORS as err:
            bag, reason = None, _one_line(err)
        _record(summary, job, bag, reason, log)
        offset += count
        if progress:
            progress(offset, total)


class BagWorker:
    """A Ray actor's state: one pipeline, built when the actor starts."""

    def __init__(self, make_pipeline: Callable[[], StereoPipeline]) -> None:
        self.pipeline = make_pipeline()

    def ready(self) -> str:
        """The loaded model, once it has loaded (a worker that cannot load it fails here)."""
        return f"{self.pipeline.estimator.variant} on {self.pipeline.estimator.device}"

    def convert(self, job: BagJob, topics: StereoTopics, options: BagOptions) -> tuple[BagSummary | None, str]:
        """(the bag's summary, '') or (None, why it failed): a bad bag is an answer, not a dead worker."""
        try:
            return convert_job(job, self.pipeline, topics, options), ""
        except BAG_ERRORS as err:
            return None, _one_line(err)


def _record(summary: FleetSummary, job: BagJob, bag: BagSummary | None, reason: str,
            log: Callable[[str], None]) -> None:
    if bag is None:
        summary.failed[str(job.source)] = reason
        log(f"{job.source}: failed: {reason}")
    else:
        summary.add(job, bag)


def _start_ray(address: str | None) -> bool:
    """Connect to (address) or start a Ray instance unless one is up; True if this call started it. Ray's own
    SIGINT/SIGTERM handlers would end the process without cleaning up: ours are put back."""
    import ray

    if ray.is_initialized():
        return False
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    for number, handler in handlers.items():
        signal.signal(number, handler)
    return True


class _WorkerPool:
    """The Ray actors of a run: idle ones, and those holding a bag (by the future of its conversion)."""

    def __init__(self, make_pipeline: Callable[[], StereoPipeline], gpus_per_worker: float) -> None:
        import ray

        available = ray.cluster_resources().get("GPU", 0)
        if gpus_per_worker > available:
            raise ValueError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has {available:g} GPUs")
        self._class = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=0)(BagWorker)
        self._make_pipeline = make_pipeline
        self.idle: list = []
        self.running: dict = {}

    def add(self) -> None:
        self.idle.append(self._class.remote(self._make_pipeline))

    def start(self, count: int, log: Callable[[str], None]) -> None:
        """``count`` workers, each with its model loaded; ValueError (one line) when a worker cannot load it."""
        import ray
        from ray.exceptions import RayActorError

        for _ in range(count):
            self.add()
        try:
            models = ray.get([worker.ready.remote() for worker in self.idle])
        except RayActorError as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else type(err).__name__
            raise ValueError(f"a Ray worker could not load the model: {reason}") from None
        log(f"{count} Ray workers ready ({', '.join(sorted(set(models)))})")

    def kill_all(self) -> None:
        import ray

        for worker in [*self.idle, *(worker for _, worker in self.running.values())]:
            ray.kill(worker)
        self.idle, self.running = [], {}


def run_on_ray(jobs: list[BagJob], make_pipeline: Callable[[], StereoPipeline], topics: StereoTopics,
               options: BagOptions, address: str | None = None, workers: int = 2, gpus_per_worker: float = 0.0,
               max_retries: int = 2, progress: Callable[[int, int], object] | None = None,
               log: Callable[[str], None] = print) -> FleetSummary:
    """The bags as tasks of ``workers`` Ray actors (each loads the model once; ``gpus_per_worker`` GPUs each).
    address: None starts a local Ray instance for the run; 'auto' or HOST:PORT joins a cluster. A worker that
    dies is replaced and its bag retried up to ``max_retries`` times. Ctrl-C or SIGTERM stops the work and
    leaves only complete outputs."""
    import ray

    summary = FleetSummary()
    counts = _set_counts(_pending(jobs, summary, log), topics, options, summary, log)
    if not counts:
        return summary
    started_here = _start_ray(address)
    pool = None
    try:
        pool = _WorkerPool(make_pipeline, gpus_per_worker)
        pool.start(min(workers, len(counts)), log)
        _dispatch(pool, counts, topics, options, max_retries, summary, progress, log)
    finally:
        if pool is not None:
            pool.kill_all()
        if started_here:
            ray.shutdown()
        remove_partial(list(counts))  # a bag cut short by Ctrl-C or a failure leaves nothing half-written
    return summary


def _dispatch(pool: _WorkerPool, counts: dict[BagJob, int], topics: StereoTopics, options: BagOptions,
              max_retries: int, summary: FleetSummary, progress, log: Callable[[str], None]) -> None:
    """Give the bags to idle workers until every one is done or failed; a worker that died is killed (it may
    still run), replaced while bags wait, and its bag retried."""
    import ray
    from ray.exceptions import RayActorError

    pending, handled, total = deque(counts), 0, sum(counts.values())
    while pending or pool.running:
        while pending and pool.idle:
            job, worker = pending.popleft(), pool.idle.pop()
            pool.running[worker.convert.remote(job, topics, options)] = (job, worker)
        (finished,), _ = ray.wait(list(pool.running), num_returns=1)
        job, worker = pool.running.pop(finished)
        try:
            outcome = ray.get(finished)
            pool.idle.append(worker)
        except RayActorError as err:  # the worker died holding this bag
            ray.kill(worker)
            shutil.rmtree(job.partial, ignore_errors=True)
            if job.target.exists():  # it had finished the bag: only its counts are lost
                log(f"{job.source}: its worker died after writing {job.target}")
                outcome = (BagSummary(), "")
            elif summary.retried[str(job.source)] < max_retries:
                summary.retried[str(job.source)] += 1
                log(f"{job.source}: its worker died ({_one_line(err)[:120]}); retrying on another")
                pending.append(job)
            else:
                outcome = (None, f"its worker died {max_retries + 1} times")
            if pending:
                pool.add()
            if job in pending:
                continue
        _record(summary, job, *outcome, log)
        handled += counts[job]
        if progress:
            progress(handled, total)
