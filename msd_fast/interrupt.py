"""A Ctrl-C while a `python -m msd_fast.<command>` starts: one line on stderr and status 130.

While the command imports torch and its other libraries, SIGINT ends the process from the signal handler
itself (os._exit) rather than by raising KeyboardInterrupt: torch's C++ start-up imports numpy and clears any
error that import raises, so a KeyboardInterrupt raised there is swallowed and leaves numpy half-imported
(the command then fails later with a traceback). Nothing has been written while the imports run, so there is
nothing to clean up. Each command's main() calls `command_started()` before it does any work; from then on a
Ctrl-C raises KeyboardInterrupt, which the command handles (its exit status is 130 too).

An importing program keeps its own SIGINT handling: the handler is installed only when the interpreter was
started as `python -m msd_fast...`.
"""
import os
import signal
import sys

EXIT_INTERRUPTED = 130
MESSAGE = "[msd_fast] interrupted by Ctrl-C while starting; nothing was written"


def _exit_now(signum, frame) -> None:
    os.write(2, (MESSAGE + "\n").encode())
    os._exit(EXIT_INTERRUPTED)


def started_as_command(argv=None, orig_argv=None) -> bool:
    """True while `python [options] -m msd_fast[.X] [args]` locates its module: Python then holds "-m" in
    sys.argv[0], and the module's name just before the arguments in sys.orig_argv."""
    argv = sys.argv if argv is None else argv
    orig = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    n = len(argv)
    return argv[:1] == ["-m"] and len(orig) > n and orig[-n - 1] == "-m" and orig[-n].split(".")[0] == "msd_fast"


def exit_on_ctrl_c_while_starting() -> None:
    """Installs the start-up handler when this process is an msd_fast command (called by msd_fast/__init__)."""
    if started_as_command():
        try:
            signal.signal(signal.SIGINT, _exit_now)
        except ValueError:  # not the main thread
            pass


def command_started() -> None:
    """A Ctrl-C from here on raises KeyboardInterrupt (only where the start-up handler is the one installed)."""
    try:
        if signal.getsignal(signal.SIGINT) is _exit_now:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        pass
