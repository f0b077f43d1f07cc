"""One pod's load, shared by its worker processes: counters in shared memory.

Owns the table layout and the backends and pool that read it. Each worker
owns one row and is the only writer of it, so an update is a single aligned
8-byte store: no lock, no atomic read-modify-write, nothing that makes one
worker wait for another. A backend's pod-wide load is the sum of its column
over the rows, read at pick time. A row whose worker died is zeroed by the
supervisor, which is how a crashed worker's connections leave the counts.

Columns (one per backend address) are handed out by the supervisor with each
endpoint snapshot, so every worker agrees which column is whose.

Layout: ``rows`` rows of ``HEADER + columns`` signed 64-bit integers. A row's
header holds the worker's pid and the snapshot generation it has applied
(the supervisor recycles a column only once every worker is past the
snapshot that dropped it and the column sums to zero).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Collection

from balancer.backend import Backend
from balancer.endpoint import Endpoint
from balancer.policies import NO_CONTEXT, PickContext, Policy
from balancer.pool import BackendPool

#: Header cells at the start of each row.
HEADER = 2
PID = 0
GENERATION = 1
CELL = 8  # bytes: int64, the width a store is atomic at on every platform we run on

#: No shared column (the table was full): the backend counts this worker's
#: connections only, as a single process would.
NO_COLUMN = -1

# Re-picks after a collision with another worker (see ``SharedPool.pick``):
# two are enough to make a repeat collision rare, and bound the cost when
# workers really do race for the same backend.
CONTENTION_RETRIES = 2


def table_size(rows: int, columns: int) -> int:
    return rows * (HEADER + columns) * CELL


class LoadTable:
    """The rows over a shared mapping (an ``mmap`` of a memfd the supervisor made)."""

    def __init__(self, buffer: mmap.mmap, rows: int, columns: int) -> None:
        if len(buffer) < table_size(rows, columns):
            raise ValueError(f"shared table too small: {len(buffer)} bytes for {rows}x{columns}")
        self.rows = rows
        self.columns = columns
        self._buffer = buffer
        width = HEADER + columns
        whole = memoryview(buffer).cast("q")
        #: One int64 view per row; the columns start at ``HEADER``.
        self.row_views: list[memoryview] = [whole[r * width : (r + 1) * width] for r in range(rows)]

    def total(self, column: int) -> int:
        cell = HEADER + column
        total = 0
        for row in self.row_views:
            total += row[cell]
        return total

    def zero_row(self, row: int) -> None:
        """Forget a worker's counts (it died: so did its connections)."""
        view = self.row_views[row]
        for i in range(len(view)):
            view[i] = 0

    def zero_column(self, column: int) -> None:
        for row in self.row_views:
            row[HEADER + column] = 0

    def column_loads(self, column: int) -> list[int]:
        """The column, row by row (tests and the admin view)."""
        return [row[HEADER + column] for row in self.row_views]

    def release(self) -> None:
        # Views first: an mmap with exported views refuses to close.
        for view in self.row_views:
            view.release()
        self.row_views = []


class SharedBackend(Backend):
    """A backend whose ``active`` is the pod-wide count (every worker's row).

    ``local`` is this worker's own connections: what decides when a draining
    backend can be forgotten here, and what this worker may move away.
    """

    __slots__ = ("_cells", "_own", "column", "local")

    def __init__(self, endpoint: Endpoint, table: LoadTable, row: int, column: int) -> None:
        self.local = 0
        self.column = column
        if column == NO_COLUMN:
            self._cells: tuple[memoryview, ...] = ()
        else:
            self._cells = tuple(table.row_views)
        self._own = table.row_views[row]
        super().__init__(endpoint)

    @property  # type: ignore[override]
    def active(self) -> int:
        if not self._cells:
            return self.local
        cell = HEADER + self.column
        total = 0
        for row in self._cells:
            total += row[cell]
        # Another worker's store may land between two reads: never report less
        # than what this worker alone holds.
        return total if total > self.local else self.local

    @active.setter
    def active(self, value: int) -> None:
        # Only Backend.__init__ assigns it (to 0); the pool moves ``local``.
        self.local = value

    def publish(self, extra: int = 0) -> None:
        if self.column != NO_COLUMN:
            self._own[HEADER + self.column] = self.local + extra


class SharedPool(BackendPool):
    """A pool whose backends count load across workers, and whose picks
    detect a collision with another worker picking the same backend at the
    same instant.

    Why the collision check: each worker reads the counts, then adds its
    connection. Two workers reading at the same moment both see the same
    least-loaded backend and both add to it. After adding, a worker looks
    again; if its backend is no longer least loaded (counting its own
    connection out), someone raced it, so it takes its connection back and
    picks again. No lock: the loser of a race redoes a pick that costs
    microseconds.
    """

    __slots__ = ("_columns", "_contended", "_pending", "row", "table")

    def __init__(self, policy: Policy, table: LoadTable, row: int) -> None:
        super().__init__(policy)
        self.table = table
        self.row = row
        #: address -> column, from the latest snapshot's message.
        self._columns: dict[str, int] = {}
        #: A backend ``pick`` counted in advance, until ``acquire`` takes it over.
        self._pending: SharedBackend | None = None
        #: The policy's race check (least connections has one; others pick without it).
        self._contended = getattr(policy, "contended", None)

    def set_columns(self, columns: dict[str, int]) -> None:
        self._columns = columns

    def new_backend(self, endpoint: Endpoint) -> Backend:
        column = self._columns.get(endpoint.address, NO_COLUMN)
        return SharedBackend(endpoint, self.table, self.row, column)

    def held(self, backend: Backend) -> int:
        return backend.local if isinstance(backend, SharedBackend) else backend.active

    def pick(self, exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT) -> Backend | None:
        self.unpick()
        contended = self._contended
        eligible = self._eligible
        attempt = 0
        while True:
            backend = self.policy.pick(eligible, exclude, ctx)
            if not isinstance(backend, SharedBackend):
                return backend
            # Count it now, before looking again: that is what lets a racing
            # worker see this pick (and this one see theirs).
            backend.publish(1)
            self._pending = backend
            if contended is None or attempt == CONTENTION_RETRIES or not contended(backend, eligible, exclude):
                return backend
            self.unpick()
            attempt += 1

    def unpick(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            pending.publish()

    def acquire(self, backend: Backend) -> None:
        if not isinstance(backend, SharedBackend):
            super().acquire(backend)
            return
        if self._pending is backend:
            self._pending = None
        elif self._pending is not None:
            self.unpick()
        backend.local += 1
        backend.publish()

    def release(self, backend: Backend) -> bool:
        if not isinstance(backend, SharedBackend):
            return super().release(backend)
        backend.local -= 1
        backend.publish()
        return self._forget_if_drained(backend)

    def local_share(self, backend: Backend) -> float:
        """This worker's part of the backend's pod-wide load (for rebalancing)."""
        if not isinstance(backend, SharedBackend):
            return 1.0
        total = backend.active
        return backend.local / total if total else 0.0


class Columns:
    """The supervisor's column book: which backend (listener, address) owns
    which column, and when a column may be handed out again.

    A column is recycled only when its backend has left discovery, every
    worker has applied the snapshot that said so (so none will pick it
    again), and its count is back to zero (so no connection still on it
    would be charged to the next owner).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._owner: dict[tuple[str, str], int] = {}
        self._free = list(range(capacity - 1, -1, -1))
        #: column -> generation of the snapshot that dropped its backend
        self._leaving: dict[int, tuple[tuple[str, str], int]] = {}

    def assign(self, key: tuple[str, str]) -> int:
        column = self._owner.get(key)
        if column is not None:
            self._leaving.pop(column, None)  # back before it was recycled: same column
            return column
        if not self._free:
            return NO_COLUMN
        column = self._free.pop()
        self._owner[key] = column
        return column

    def leave(self, key: tuple[str, str], generation: int) -> None:
        column = self._owner.get(key)
        if column is not None and column not in self._leaving:
            self._leaving[column] = (key, generation)

    def recycle(self, applied: int, total: Callable[[int], int]) -> list[int]:
        """Free what every worker is past (``applied``: the lowest generation
        any worker has applied) and nobody is connected to; the freed columns."""
        freed = []
        for column, (key, generation) in list(self._leaving.items()):
            if generation <= applied and total(column) == 0:
                del self._leaving[column]
                del self._owner[key]
                self._free.append(column)
                freed.append(column)
        return freed

    def owned(self, listener: str) -> dict[str, int]:
        return {address: column for (name, address), column in self._owner.items() if name == listener}

    def __len__(self) -> int:
        return len(self._owner)
