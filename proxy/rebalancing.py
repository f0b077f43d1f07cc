"""Carrying out the rebalancer's plan on one listener.

Owns the tick (once a second: read the loads, ask ``balancer.rebalance`` for
the moves), the jitter that spreads each tick's moves over the next second,
and the books (moves per backend, the log line with the reason). Which
connections can move, and how one ends gracefully, is the listener's
protocol's business (``TcpListener.rebalance_view``/``move``): a WebSocket
gets a 1012 Close, a gRPC call ``UNAVAILABLE``, a raw TCP connection only a
close when idle and allowed.
"""

from __future__ import annotations

import asyncio
import logging
import random

from balancer.rebalance import Movable, RebalanceConfig, Rebalancer
from proxy.listener import TcpListener

log = logging.getLogger("evenflow.rebalance")

# Once a second: moves are paced per second anyway, and a scan of a listener's
# connections a second costs nothing next to relaying them.
TICK = 1.0


class RebalanceTask:
    def __init__(self, listener: TcpListener, config: RebalanceConfig, rng: random.Random | None = None) -> None:
        self.listener = listener
        self.config = config
        self.rebalancer = Rebalancer(config)
        self._random = rng or random.Random()
        self._last_reason = ""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick()

    def tick(self) -> None:
        listener = self.listener
        loop = listener.loop
        now = loop.time()
        movables, leaving = listener.rebalance_view(now, self.config)
        eligible = listener.pool.eligible
        # Connections already asked to leave are gone as far as balance goes:
        # counting them would ask for the same moves twice.
        active = {b.address: max(0, b.active - leaving.get(b.address, 0)) for b in eligible}
        weights = {b.address: b.endpoint.weight for b in eligible}
        plan = self.rebalancer.plan(active, weights, movables, now)
        moves = self._my_part(plan.moves)
        if plan.moves:
            log.info(
                "rebalancing",
                extra={
                    "listener": listener.name,
                    "imbalance": round(plan.imbalance, 3),
                    "needed": plan.needed,
                    "moves": len(moves),
                    "reason": plan.reason,
                },
            )
        elif plan.reason != self._last_reason and plan.needed:
            log.debug("rebalance waiting", extra={"listener": listener.name, "reason": plan.reason})
        self._last_reason = plan.reason
        for move in moves:
            # Spread over the tick, so the clients reconnect in a trickle.
            loop.call_later(self._random.uniform(0, TICK), self._move, move, plan.reason)

    def _my_part(self, moves: tuple[Movable, ...]) -> tuple[Movable, ...]:
        """Worker processes: the loads are the pod's, and so is the plan; each
        worker carries out its share of each backend's moves (its part of that
        backend's connections), so N workers together move what one would."""
        share = getattr(self.listener.pool, "local_share", None)
        if share is None or not moves:
            return moves
        by_backend: dict[str, list[Movable]] = {}
        for move in moves:
            by_backend.setdefault(move.backend, []).append(move)
        mine: list[Movable] = []
        for address, group in by_backend.items():
            backend = self.listener.pool.get(address)
            if backend is None:
                continue
            exact = len(group) * share(backend)
            # Random rounding: over many ticks each worker moves its exact share.
            count = int(exact) + (1 if self._random.random() < exact - int(exact) else 0)
            mine.extend(group[:count])
        return tuple(mine)

    def _move(self, move: Movable, reason: str) -> None:
        listener = self.listener
        if not listener.move(move.handle):
            return  # it ended by itself meanwhile
        moves = listener.stats.rebalance_moves
        moves[move.backend] = moves.get(move.backend, 0) + 1
        log.info("rebalance move", extra={"listener": listener.name, "backend": move.backend, "reason": reason})
