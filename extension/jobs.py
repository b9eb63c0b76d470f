"""One job at a time, in a background thread, with progress the UI can poll and a cancel flag the loop obeys.

The training loop reports through a ProgressCallback; the callback here records the event and returns False once
Cancel was pressed, which makes the loop raise Cancelled at its next report (the loop writes no adapter then).
A second start while a job runs raises Busy, whose message the tab shows as it is.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from ..trainer.errors import Cancelled, UserError, out_of_memory_line
from ..trainer.progress import ProgressEvent

STAGE_NAMES = {
    "load": "loading the model", "pairs": "making pairs", "retain": "making the retain set",
    "cache": "encoding pair images", "train": "training", "checkpoint": "saving a checkpoint",
    "preview": "rendering the preview", "save": "writing the adapter", "done": "done", "start": "starting",
    "compare": "generating",
}


class Busy(UserError):
    """A job is already running."""


@dataclass
class Job:
    kind: str
    label: str
    started: float = field(default_factory=time.time)
    state: str = "running"  # running | done | failed | cancelled
    event: ProgressEvent = field(default_factory=lambda: ProgressEvent("start"))
    stage_started: float = field(default_factory=time.time)
    stage_first: tuple[float, int] | None = None  # (time, step) of the first report of the current stage
    messages: list[str] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    finished: float | None = None
    cancel_requested: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def eta_seconds(self) -> float | None:
        """Remaining time of the current stage, from its rate since its first report."""
        e = self.event
        if not e.total or self.stage_first is None:
            return None
        t0, s0 = self.stage_first
        done = e.step - s0
        if done <= 0:
            return None
        rate = (time.time() - t0) / done
        return max(0.0, rate * (e.total - e.step))

    def summary(self) -> str:
        """One line for people: stage, step/total, ETA and the latest numbers."""
        e = self.event
        name = STAGE_NAMES.get(e.stage, e.stage)
        head = f"{self.label}: {name}" + (f" {e.step}/{e.total}" if e.total else "")
        if e.message and not e.total:
            head += f" ({e.message})"
        parts = [head]
        if self.running:
            eta = self.eta_seconds()
            if eta is not None:
                parts.append(f"ETA {format_seconds(eta)}")
        if e.logs:
            parts.append(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in e.logs.items()))
        elapsed = (self.finished or time.time()) - self.started
        parts.append(f"elapsed {format_seconds(elapsed)}")
        return " · ".join(parts)

    def fraction(self) -> float:
        e = self.event
        return min(1.0, e.step / e.total) if e.total else (1.0 if self.state == "done" else 0.0)


def format_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class JobRunner:
    """Runs at most one job; thread-safe; the finished job stays readable until the next one starts."""

    def __init__(self):
        self._lock = threading.Lock()
        self._job: Job | None = None

    @property
    def job(self) -> Job | None:
        return self._job

    def busy(self) -> bool:
        job = self._job
        return job is not None and job.running

    def _claim(self, kind: str, label: str) -> Job:
        with self._lock:
            if self._job is not None and self._job.running:
                raise Busy(f"A job is already running ({self._job.summary()}). Wait for it to finish, "
                           "or press Cancel.")
            self._job = Job(kind, label)
            return self._job

    def start(self, kind: str, label: str, fn: Callable[..., Any], *args, **kwargs) -> Job:
        """Run fn(*args, progress=callback, **kwargs) in a daemon thread; Busy if a job is running."""
        job = self._claim(kind, label)
        thread = threading.Thread(target=self._run, args=(job, fn, args, kwargs), name=f"duo-{kind}", daemon=True)
        thread.start()
        return job

    def run_here(self, kind: str, label: str, fn: Callable[..., Any], *args, **kwargs) -> Job:
        """The same, in the calling thread (for short jobs such as a comparison): returns when it ends."""
        job = self._claim(kind, label)
        self._run(job, fn, args, kwargs)
        return job

    def cancel(self) -> bool:
        job = self._job
        if job is None or not job.running:
            return False
        job.cancel_requested = True
        job._cancel.set()
        return True

    def _callback(self, job: Job):
        def callback(event: ProgressEvent):
            if event.stage != job.event.stage:
                job.stage_started, job.stage_first = time.time(), None
            if event.total and job.stage_first is None:
                job.stage_first = (time.time(), event.step)
            job.event = event
            if event.message:
                job.messages.append(f"[{event.stage}] {event.message}")
                del job.messages[:-200]
            return not job._cancel.is_set()
        return callback

    def _run(self, job: Job, fn, args, kwargs) -> None:
        try:
            job.result = fn(*args, progress=self._callback(job), **kwargs)
            job.state = "cancelled" if job._cancel.is_set() and job.result is None else "done"
        except Cancelled:
            job.state, job.error = "cancelled", "Cancelled: no adapter was written."
        except UserError as e:
            job.state, job.error = "failed", str(e)
        except Exception as e:  # a bug or a host failure: keep the UI alive, show it, log the traceback
            line = out_of_memory_line(e)  # a card too small for the model: said, not a bug
            if line is None:
                traceback.print_exc()
            job.state, job.error = "failed", line or f"{type(e).__name__}: {e}"
        finally:
            job.finished = time.time()
            job._done.set()
