"""Scripted time and randomness for exact-pick policy tests."""

from __future__ import annotations

import random


class Clock:
    """A clock that moves only when the test sets ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedRandom(random.Random):
    """``random()`` returns the given values in order (and fails when they run out)."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)
