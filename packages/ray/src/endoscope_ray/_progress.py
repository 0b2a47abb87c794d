"""The live progress bar: rows, tokens per second, replicas alive."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Progress", "interactive"]


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def interactive() -> bool:
    """Whether someone is watching: a terminal on stderr, or a notebook."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) or _in_notebook()


class Progress:
    """A tqdm bar (terminal or notebook widget), or nothing when disabled.

    Args:
        enabled: True, False, or None for "when interactive".
        total: the dataset's rows when known.
        initial: rows already done (a resumed run).
    """

    def __init__(self, enabled: bool | None, total: int | None, initial: int) -> None:
        self.bar: Any = None
        self.tokens = 0
        self.started = time.monotonic()
        if enabled is None:
            enabled = interactive()
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, initial=initial, unit="row", desc="map_traces", dynamic_ncols=True
        )

    def begin(self, alive: int) -> None:
        """The replicas are loaded: rates count from now."""
        self.started = time.monotonic()
        self.replicas(alive)

    def update(self, rows: int, tokens: int, alive: int) -> None:
        self.tokens += tokens
        if self.bar is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix(
            {"tok/s": f"{self.tokens / elapsed:.0f}", "replicas": alive}, refresh=False
        )
        self.bar.update(rows)

    def replicas(self, alive: int) -> None:
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            self.bar.set_postfix({"tok/s": f"{self.tokens / elapsed:.0f}", "replicas": alive})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
