"""One thread owns the model: every request that runs it is a job in a single queue.

Why one worker: a ChatModel's hooks are global to the model (a steering attached for one
request would leak into another running at the same time), and two generations at once on
2 cores only make both slower. So jobs run one after another; a second browser tab sees its
place in the queue and waits its turn or cancels.

Why nothing deadlocks when a client goes away: the worker never waits on a client. Events go
to the job's own unbounded queue (the web side reads them when it can, or never); a job
whose client left is marked cancelled, and the generation loop checks that flag at every
token and stops by raising `Cancelled` from the token callback, which unwinds the hook
context managers as any exception does. A queued job that was cancelled is skipped.
"""

from __future__ import annotations

import itertools
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RefusalScopeError


class Cancelled(Exception):
    """Raised inside a job (from `Job.check`) when its client cancelled or disconnected."""


Event = dict[str, Any]


@dataclass
class Job:
    """A unit of model work plus the channel its events travel on."""

    id: str
    run: Callable[["Job"], None]
    kind: str = "job"
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: str, **data: Any) -> None:
        self.events.put({"event": event, **data})

    def cancel(self) -> None:
        self.cancelled.set()

    def check(self) -> None:
        """Call often inside `run`: stops the job promptly once it was cancelled."""
        if self.cancelled.is_set():
            raise Cancelled


class ModelWorker:
    """A single daemon thread running jobs in submission order."""

    def __init__(self, name: str = "refusalscope-model-worker"):
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending: list[Job] = []  # submitted, not yet started (for queue positions)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._jobs: dict[str, Job] = {}
        self.current: Job | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ clients
    def submit(self, run: Callable[[Job], None], kind: str = "job") -> Job:
        job = Job(id=f"{kind}-{next(self._ids)}", run=run, kind=kind)
        with self._lock:
            self._pending.append(job)
            self._jobs[job.id] = job
            ahead = len(self._pending) - 1 + (1 if self.current is not None else 0)
        job.emit("queued", job=job.id, ahead=ahead)
        self._queue.put(job)
        return job

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if no such job is known (or it ended)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.finished.is_set():
            return False
        job.cancel()
        return True

    def position(self, job: Job) -> int:
        """Jobs that run before `job` (0: it is running or next)."""
        with self._lock:
            if job in self._pending:
                return self._pending.index(job) + (1 if self.current is not None else 0)
        return 0

    @property
    def busy(self) -> bool:
        with self._lock:
            return self.current is not None or bool(self._pending)

    def stop(self, timeout: float = 5.0) -> None:
        for job in list(self._pending):
            job.cancel()
        if self.current is not None:
            self.current.cancel()
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._pending.remove(job)
                self.current = job
            for other in list(self._pending):  # tell waiting clients they moved up
                other.emit("queued", job=other.id, ahead=self.position(other))
            try:
                if job.cancelled.is_set():
                    job.emit("cancelled")
                else:
                    job.emit("started", job=job.id)
                    job.run(job)
                    job.emit("cancelled" if job.cancelled.is_set() else "done")
            except Cancelled:
                job.emit("cancelled")
            except RefusalScopeError as exc:
                job.emit("error", error=exc.problem, fix=exc.fix)
            except Exception as exc:  # a bug must not kill the worker that every tab shares
                traceback.print_exc()
                job.emit("error", error=f"internal error ({type(exc).__name__})", fix="see the server log")
            finally:
                with self._lock:
                    self.current = None
                    self._jobs.pop(job.id, None)
                job.finished.set()
                job.events.put(None)  # end of stream
