"""One readable line per failure instead of a traceback (ZHINAO_DEBUG=1 shows the traceback)."""

import contextlib
import functools
import os
import signal
import sys

import typer
from rich.console import Console

from zhinao_k8s.api.load import SpecError

err = Console(stderr=True, highlight=False)
EXIT_SPEC = 2
EXIT_FAILED = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that every `finally` (replica stops) runs."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def friendly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except SpecError as exc:
            # soft_wrap: one problem stays one line however narrow the terminal (grep, copy, CI logs)
            err.print(f"[bold red]invalid {exc.what}[/] {exc.source}:", soft_wrap=True)
            for line in exc.problems:
                err.print(f"  {line}", markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_SPEC) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM where a command turns it into one
            terminated = isinstance(exc, Terminated)
            err.print("terminated" if terminated else "interrupted")
            raise typer.Exit(143 if terminated else 130) from None
        except Exception as exc:  # the user sees one line; developers set ZHINAO_DEBUG=1
            if os.environ.get("ZHINAO_DEBUG") == "1":
                raise
            err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", markup=True, highlight=False)
            err.print("(set ZHINAO_DEBUG=1 for a traceback)", style="dim")
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper


def die(message: str, code: int = EXIT_FAILED) -> None:
    err.print(f"[bold red]error:[/] {message}")
    sys.stderr.flush()
    raise typer.Exit(code)
