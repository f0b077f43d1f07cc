"""``evenflow top``: the dashboard's view in a terminal, for ``kubectl exec``.

Polls the admin server's ``/backends`` over plain HTTP and redraws a frame
with ANSI escapes (no curses). Events are derived by diffing consecutive
documents (a backend appearing, leaving or changing state), so it needs
nothing from the admin API beyond its public JSON contract. Read-only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from proxy.dashboard import backend_status

EXIT_OK = 0
EXIT_FAIL = 1

# Escape sequences: home + clear screen, hide/show cursor, and a colour per status.
CLEAR = "\x1b[H\x1b[2J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
RESET = "\x1b[0m"
BOLD = "\x1b[1m"
DIM = "\x1b[2m"
COLOURS = {"ready": "\x1b[32m", "slow start": "\x1b[36m", "draining": "\x1b[33m", "ejected": "\x1b[31m", "unhealthy": "\x1b[35m"}
SPARKS = "▁▂▃▄▅▆▇█"
#: Bar width in cells: fits an 80-column terminal beside address and counts.
BAR_WIDTH = 30
#: Imbalance samples kept for the sparkline (one per frame).
HISTORY = 60
#: Derived events kept and shown.
EVENTS = 8


def fetch(admin: str, token: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``/backends`` from ``admin`` (``HOST:PORT`` or a URL)."""
    base = admin if "://" in admin else f"http://{admin}"
    request = urllib.request.Request(base.rstrip("/") + "/backends")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


@dataclass
class TopState:
    """What one frame remembers of the previous: rates, history, events."""

    accepted: dict[str, tuple[float, int]] = field(default_factory=dict)
    history: dict[str, deque[float]] = field(default_factory=dict)
    statuses: dict[tuple[str, str], str] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=EVENTS))
    primed: bool = False

    def observe(self, doc: dict[str, Any], now: float) -> dict[str, float]:
        """Fold ``doc`` in; return each listener's rate of new connections per second."""
        rates: dict[str, float] = {}
        seen: dict[tuple[str, str], str] = {}
        stamp = time.strftime("%H:%M:%S", time.localtime())
        for listener in doc["listeners"]:
            name = listener["name"]
            total = sum(b["total"] for b in listener["backends"])
            last = self.accepted.get(name)
            rates[name] = max(0, total - last[1]) / (now - last[0]) if last and now > last[0] else 0.0
            self.accepted[name] = (now, total)
            self.history.setdefault(name, deque(maxlen=HISTORY)).append(listener["balance"]["imbalance_ratio"])
            for backend in listener["backends"]:
                key = (name, backend["address"])
                seen[key] = status = backend_status(backend)
                before = self.statuses.get(key)
                if self.primed and before != status:
                    what = "added" if before is None else status
                    self.events.appendleft(f"{stamp} {name} {backend['address']} {what}")
        if self.primed:
            for name, address in self.statuses.keys() - seen.keys():
                self.events.appendleft(f"{stamp} {name} {address} removed")
        self.statuses = seen
        self.primed = True
        return rates


def sparkline(values: deque[float]) -> str:
    """Imbalance ratios as block characters: 1.0 (even) is the lowest block."""
    if not values:
        return ""
    top = max(2.0, *values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int((max(v, 1.0) - 1) / (top - 1) * (len(SPARKS) - 1)))] for v in values)


def render(doc: dict[str, Any], rates: dict[str, float], state: TopState, colour: bool = True, admin: str = "") -> str:
    """One frame as text."""

    def paint(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if colour else text

    lines = [paint(BOLD, f"evenflow top  {admin}") + paint(DIM, "  " + time.strftime("%H:%M:%S"))]
    for listener in doc["listeners"]:
        backends = listener["backends"]
        active = sum(b["active"] for b in backends)
        total = sum(b["total"] for b in backends)
        balance = listener["balance"]
        lines.append("")
        lines.append(
            paint(BOLD, listener["name"])
            + f"  {listener['protocol']} {listener['listen']}  active {active}  total {total}"
            + f"  new/s {rates.get(listener['name'], 0.0):.1f}  imbalance {balance['imbalance_ratio']}"
        )
        most = max([1, *(b["active"] for b in backends)])
        width = max([len(b["address"]) for b in backends] or [0])
        for backend in backends:
            status = backend_status(backend)
            cells = round(BAR_WIDTH * backend["active"] / most)
            bar = paint(COLOURS.get(status, ""), "█" * cells) + " " * (BAR_WIDTH - cells)
            lines.append(
                f"  {backend['address']:<{width}}  {paint(COLOURS.get(status, ''), f'{status:<10}')}"
                f" {bar} {backend['active']:>5}  (total {backend['total']})"
            )
        if not backends:
            lines.append(paint(DIM, "  no backends"))
        lines.append(f"  imbalance {sparkline(state.history.get(listener['name'], deque()))}")
    if state.events:
        lines.append("")
        lines.append(paint(BOLD, "events"))
        lines.extend("  " + event for event in state.events)
    return "\n".join(lines) + "\n"


def run_top(
    admin: str,
    interval: float = 1.0,
    once: bool = False,
    token: str | None = None,
    out: TextIO = sys.stdout,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Print one frame (``once``) or redraw every ``interval`` until interrupted."""
    token = token or os.environ.get("EVENFLOW_ADMIN_TOKEN") or None
    colour = out.isatty() and "NO_COLOR" not in os.environ
    state = TopState()
    if once:
        try:
            doc = fetch(admin, token)
        except (OSError, ValueError) as exc:
            print(f"evenflow top: {admin}: {_why(exc)}", file=sys.stderr)
            return EXIT_FAIL
        out.write(render(doc, state.observe(doc, clock()), state, colour, admin))
        out.flush()
        return EXIT_OK
    if colour:
        out.write(HIDE_CURSOR)
    try:
        while True:
            try:
                doc = fetch(admin, token)
                frame = render(doc, state.observe(doc, clock()), state, colour, admin)
            except (OSError, ValueError) as exc:
                # Keep polling: the proxy may be restarting.
                frame = f"evenflow top: {admin}: {_why(exc)} (retrying)\n"
            out.write(CLEAR + frame)
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if colour:
            out.write(SHOW_CURSOR)
            out.flush()


def _why(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}" + (" (need --token or EVENFLOW_ADMIN_TOKEN)" if exc.code == 401 else "")
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc)
