"""Child-process checks started early, on the core the in-process tests leave idle.

Some tests do nothing themselves but wait for a child process (the example notebooks, the
forced-4-device sharding runs, MixFlow's float64 run, the Ctrl-C run, the docs build): about
4.5 minutes of the default run's work on a 2-core machine. Each such test declares its child as
a job (`job`, at import) and marks itself ``@pytest.mark.background(name)``. When the session
starts, ``conftest.py`` hands the selected tests' jobs, in the order their tests run, to one
worker thread, which runs them one at a time while the in-process tests go on; the test then
calls `result` and asserts on the same ``CompletedProcess`` as before. A job that nobody has
started when its test asks for it (its test came first, or the worker is not running: a test
run with ``-p no:...``, or any run on pytest-xdist workers, as ``make test``'s two, which keep
both cores busy themselves) runs in the test itself. The child, its inputs and the assertions
are the same either way; only when it runs moves. The run's summary lists each job and where it ran.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_LOCK = threading.Lock()


@dataclass
class Job:
    """``command(workdir) -> (argv, popen_kwargs)``, run like ``subprocess.run(argv,
    capture_output=True, text=True, timeout=timeout, **popen_kwargs)`` in a fresh temporary
    folder ``workdir``; ``before()`` / ``after()`` (optional) are called just before and just
    after the child, their values kept for the test (e.g. file times)."""

    name: str
    command: Callable
    timeout: float = 600
    before: Callable | None = None
    after: Callable | None = None
    state: str = "queued"              # queued -> running -> done
    where: str = ""                    # "background" or "in the test"
    seconds: float = 0.0
    started: float = 0.0               # time.perf_counter() when it started
    done: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen | None = None
    outcome: "Done | BaseException | None" = None

    def execute(self, where: str, workdir: Path):
        self.where = where
        self.started = t0 = time.perf_counter()
        try:
            noted_before = None if self.before is None else self.before()
            argv, kwargs = self.command(workdir)
            proc = self._run(argv, **kwargs)
            noted_after = None if self.after is None else self.after()
            self.outcome = Done(proc, workdir, noted_before, noted_after)
        except BaseException as e:   # handed to the test, which raises it
            self.outcome = e
        finally:
            self.seconds = time.perf_counter() - t0
            self.state = "done"
            self.done.set()

    def _run(self, argv, **kwargs):
        # subprocess.run(argv, capture_output=True, text=True, timeout=...), keeping the Popen
        # so that a session that ends early can kill the child
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              **kwargs) as proc:
            self.proc = proc
            try:
                out, err = proc.communicate(timeout=self.timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@dataclass
class Done:
    proc: subprocess.CompletedProcess
    workdir: Path
    before: object
    after: object


#: name -> Job, filled in by the test modules at import (collection) time
JOBS: dict[str, Job] = {}


def job(name: str, command, *, timeout: float = 600, before=None, after=None) -> str:
    """Declare a job; ``command`` is ``workdir -> (argv, popen_kwargs)`` or a plain argv list.
    Returns the name (for ``pytest.mark.background``)."""
    if not callable(command):
        argv = list(command)
        command = lambda workdir: (argv, {})  # noqa: E731
    JOBS[name] = Job(name, command, timeout, before, after)
    return name


_CALL = """
import pickle, sys
sys.path[:0] = [{tests!r}, {folder!r}]
import {module} as m
with open({out!r}, "wb") as f:
    pickle.dump(m.{function}(), f)
"""


def call_job(name: str, module_file: str, function: str, *, timeout: float = 600) -> str:
    """Declare a job that calls ``function()`` of a test module (by its ``__file__``) in a child
    process; `value` returns what it returned (pickled: numbers, NumPy arrays, dicts). For an
    in-process fit whose numbers several tests check: the fit itself is unchanged, it only runs
    early, next to the in-process tests."""
    path = Path(module_file).resolve()
    tests = next(p for p in path.parents if p.name == "tests")

    def command(workdir):
        code = _CALL.format(tests=str(tests), folder=str(path.parent), module=path.stem,
                            function=function, out=str(Path(workdir) / "value.pkl"))
        return [sys.executable, "-c", code], {"cwd": workdir}
    return job(name, command, timeout=timeout)


def value(name: str, tmp_path: Path):
    """What the `call_job`'s function returned; its printed output is printed here (pytest
    shows it with the test's output). A failed call fails with the child's traceback."""
    done = result(name, tmp_path)
    print(done.proc.stdout, end="")
    assert done.proc.returncode == 0, done.proc.stderr[-4000:]
    with open(done.workdir / "value.pkl", "rb") as f:
        return pickle.load(f)


def result(name: str, tmp_path: Path) -> Done:
    """The job's child, finished: waits for the worker if it is running it, runs it here (in
    ``tmp_path``) if nobody has started it. Raises what ``subprocess.run`` would (a timeout)."""
    j = JOBS[name]
    with _LOCK:
        mine = j.state == "queued"
        if mine:
            j.state = "running"
    if mine:
        j.execute("in the test", tmp_path)
    j.done.wait()
    if isinstance(j.outcome, BaseException):
        raise j.outcome
    return j.outcome


class _Worker:
    def __init__(self):
        self.thread, self.order, self.stopping, self.tmp_factory = None, [], False, None
        self.t0 = time.perf_counter()

    def start(self, names, tmp_factory=None):
        self.order = [n for n in dict.fromkeys(names) if n in JOBS]
        self.tmp_factory, self.t0 = tmp_factory, time.perf_counter()
        if self.order and tmp_factory is not None:
            # pytest makes its base temporary folder on first use, not thread-safely: make it
            # here, before the worker and the tests' tmp_path can both reach for it
            tmp_factory.getbasetemp()
        if self.order and self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="background-jobs",
                                           daemon=True)
            self.thread.start()

    def _workdir(self, name):
        safe = re.sub(r"[^A-Za-z0-9_]+", "_", name)[:30]
        if self.tmp_factory is not None:
            return self.tmp_factory.mktemp(safe)
        return Path(tempfile.mkdtemp(prefix=safe))

    def _loop(self):
        for name in self.order:
            j = JOBS[name]
            with _LOCK:
                if self.stopping or j.state != "queued":
                    continue
                j.state = "running"
            try:
                workdir = self._workdir(name)
            except BaseException as e:
                # handed to the job's test (which raises it) instead of ending this thread
                # with the job marked running: its test would wait for it forever (seen once:
                # a run of test_docs.py hung after a PytestUnhandledThreadExceptionWarning)
                j.where, j.outcome, j.state = "background", e, "done"
                j.done.set()
                continue
            j.execute("background", workdir)

    def stop(self):
        """End of the session: nothing new starts, a child still running is killed."""
        self.stopping = True
        for j in JOBS.values():
            if (j.state == "running" and j.where == "background" and j.proc is not None
                    and j.proc.poll() is None):
                j.proc.kill()


WORKER = _Worker()


def summary_lines() -> list[str]:
    """One line per job that ran: how long its child took, where, and when it started."""
    done = sorted((j for j in JOBS.values() if j.state == "done"), key=lambda j: j.started)
    return [f"{j.name}: {j.seconds:.1f} s ({j.where}, from {j.started - WORKER.t0:.0f} s into "
            "the session)" for j in done]
