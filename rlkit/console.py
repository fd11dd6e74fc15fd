"""What a run says, on the terminal and in RUN_DIR/run.log, line for line.

`ConsoleLog` wraps sys.stdout and sys.stderr for the lifetime of `rlkit run` / `rlkit resume` (and the Python
API): every write goes to the terminal and, once the run directory is known (`attach`), to run.log; lines said
before that (the preparation's, a resume's) are kept and written first. Secrets are masked in both
(rlkit/secrets.py). The progress bar draws on the terminal alone, so run.log holds only lines, also under nohup
or SLURM.
"""

from __future__ import annotations

import _thread
import contextlib
import io
import os
import signal
import sys
import threading
from pathlib import Path

from rlkit.secrets import scrub

_active: ConsoleLog | None = None


def current() -> ConsoleLog | None:
    """The console log of the command running in this process, if any."""
    return _active


class _Tee(io.TextIOBase):
    def __init__(self, stream, log: ConsoleLog):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        text = scrub(text)
        self.stream.write(text)
        self.log.record(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")


class ConsoleLog:
    def __init__(self):
        self.run_dir: Path | None = None
        self._file = None
        self._pending: list[str] = []
        self._partial = ""
        self.stdout = self.stderr = None  # the streams under the tee (the terminal)
        self.ignore_signals_after = False  # the command ends the process after a stop: a late signal must not
        # raise during its shutdown

    def __enter__(self) -> ConsoleLog:
        global _active
        # a stop signal before the loop takes over (loading a model can take minutes) is remembered, not raised
        # inside library code that may swallow it or leave its threads half started; a second one exits at once
        self.stop_signal = 0
        self._handlers = {}
        if threading.current_thread() is threading.main_thread():  # (only the main thread may set handlers)
            self._handlers = {s: signal.signal(s, self._early_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.stdout, self.stderr = sys.stdout, sys.stderr
        self._out, self._err = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        sys.stdout, sys.stderr = self._out, self._err
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _cancel_again()
        for s, handler in self._handlers.items():  # (SIG_IGN when the process is about to exit after a stop)
            signal.signal(s, signal.SIG_IGN if self.ignore_signals_after else handler)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        if self._partial:
            self.record("\n")
        if self._file is not None:
            with contextlib.suppress(OSError):  # (a full disk: the terminal has said everything)
                self._file.close()
            self._file = None
        _active = None

    def _early_stop(self, signum, frame) -> None:
        if self.stop_signal:
            interrupt(signum, frame)
            return
        self.stop_signal = signum
        print(f"\nsignal {signum}: stopping (again to stop at once)")

    def attach(self, run_dir: Path) -> None:
        """From now on lines go to RUN_DIR/run.log (appended), the ones said so far first."""
        if self._file is not None:
            return
        self.run_dir = Path(run_dir)
        self._file = open(self.run_dir / "run.log", "a")
        self._file.write("".join(self._pending))
        self._file.flush()
        self._pending = []

    def record(self, text: str) -> None:
        self._partial += text
        if "\n" not in self._partial:
            return
        done, _, self._partial = self._partial.rpartition("\n")
        lines = done + "\n"
        if self._file is None:
            self._pending.append(lines)
            return
        try:
            self._file.write(lines)
            self._file.flush()
        except OSError:  # a full disk must not hide what the terminal says
            pass

    def draw_progress_on(self, console) -> None:
        """While a rich progress bar is live on `console`, lines are printed above it (rich's FileProxy does
        that for a terminal) and still recorded here."""
        from rich.file_proxy import FileProxy

        if console.is_terminal:
            self._out.stream = FileProxy(console, self.stdout)

    def progress_done(self) -> None:
        self._out.stream.flush()
        self._out.stream = self.stdout


_again: threading.Timer | None = None


def interrupt(signum: int, frame) -> None:
    """Stop at once: KeyboardInterrupt where the signal found the program, unless that is inside a finalizer
    (`__del__`), where Python prints the exception and goes on; the signal then comes again a moment later."""
    global _again
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            if _again is None or not _again.is_alive():
                # interrupt_main, not os.kill: an OS signal arriving while the interpreter shuts down (handlers
                # back to the default) would kill the process
                _again = threading.Timer(0.05, _thread.interrupt_main, (signum,))
                _again.daemon = True
                _again.start()
            return
        frame = frame.f_back
    _cancel_again()
    raise KeyboardInterrupt


def _cancel_again() -> None:
    global _again
    if _again is not None:
        _again.cancel()
        _again = None


def quiet_libraries() -> None:
    """Library chatter (optional-backend notices, weight-loading bars) would bury rlkit's own output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for library in ("transformers", "diffusers"):  # already imported (in-process): tell it directly
        if library in sys.modules:
            logging = __import__(f"{library}.utils.logging", fromlist=["_"])
            logging.set_verbosity_error()
            logging.disable_progress_bar()
