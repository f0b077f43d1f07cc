"""Shared fixtures: every asyncio test runs on uvloop, as production does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.peers import ProxyProcess


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start ``evenflow run`` with a config dict; every started proxy is stopped."""
    started: list[ProxyProcess] = []

    def start(config: dict[str, Any], *extra_args: str, ready: bool = True) -> ProxyProcess:
        p = ProxyProcess(config, extra_args).start(tmp_path, ready=ready)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
