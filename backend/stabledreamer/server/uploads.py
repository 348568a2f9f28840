"""Large submits are checked and written off the service loop, so one client's uploads never
stall another client's ``hello`` or ``ping``.

A submit whose buffers reach ``offload_bytes`` goes to a small thread pool: there its digest is
computed, the request checked (``SubmitCheck.prepare``) and its files written into a staging
folder (``JobStore.stage``). The loop learns of the finished upload through a pipe it polls and
then accepts it (the record, the queue limit, the reply), so every change to the service's
state still happens on the loop. Smaller submits take the same steps inline.

While a client's upload is in flight, its later messages wait behind it (in order, bounded),
so a client that submits and then asks for the job's status sees the job; ``hello`` and
``ping`` do not wait (they name no job). Other clients are served as usual.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue

from stabledreamer_protocol import Message, Submit

from .delivery import Peer
from .jobs import JobStore
from .submit import Prepared, SubmitCheck

log = logging.getLogger("stabledreamer.service")

OFFLOAD_BYTES = 1 << 20
"""Submits with at least this many buffer bytes are handled on an upload thread (a 1 MiB
upload costs the loop a few milliseconds inline; a 48 MiB one about 150 ms here)."""
UPLOAD_THREADS = 2
MAX_WAITING = 1000
"""Messages of one client that may wait behind its upload; more are refused with ``busy``."""
MAX_WAITING_BYTES = 64 << 20
"""Buffer bytes of one client's messages waiting behind its upload (one largest message): more
submits are refused with ``busy``, so a client cannot pile up uploads in the service's memory
faster than they are written."""


def waiting_bytes(msg: Message) -> int:
    return payload_bytes(msg) if isinstance(msg, Submit) else 0


def payload_bytes(msg: Submit) -> int:
    return sum(a.nbytes for a in msg.arrays().values())


@dataclass
class Staged:
    """A submit, checked, with its files written: ready for the loop to accept."""

    digest: str
    prepared: Prepared | None = None
    folder: Path | None = None
    error: BaseException | None = None
    """Why it cannot be accepted (a ``ProtocolError``, ``DiskFullError`` or other ``OSError``)."""

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def stage(msg: Submit, submits: SubmitCheck, store: JobStore, parent=None) -> Staged:
    """Digest, check and write one submit; never raises (the error travels in ``Staged``).
    ``parent``: a refine's or continue's resolved parent (``followups.resolve_parent``)."""
    staged = Staged(digest="")
    try:
        staged.digest = msg.digest()
        staged.prepared = submits.prepare(msg, parent)
        staged.folder = store.stage(staged.prepared.files)
    except Exception as e:
        staged.error = e
    return staged


@dataclass
class Finished:
    peer: Peer
    msg: Submit
    staged: Staged


class Uploads:
    def __init__(
        self,
        submits: SubmitCheck,
        store: JobStore,
        offload_bytes: int = OFFLOAD_BYTES,
        threads: int = UPLOAD_THREADS,
        max_waiting: int = MAX_WAITING,
        max_waiting_bytes: int = MAX_WAITING_BYTES,
    ) -> None:
        self.submits, self.store = submits, store
        self.offload_bytes = offload_bytes
        self.max_waiting, self.max_waiting_bytes = max_waiting, max_waiting_bytes
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload")
        self._done: SimpleQueue[Finished] = SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.in_flight: dict[bytes, Submit] = {}
        """Client identity -> its upload being staged (one at a time per client)."""
        self.waiting: dict[bytes, deque[tuple[Peer, Message]]] = {}
        self._waiting_bytes: dict[bytes, int] = {}
        self.closed = False

    def fileno(self) -> int:
        """Readable when an upload has finished (the loop polls it)."""
        return self._wake_r

    def offloads(self, msg: Submit) -> bool:
        return payload_bytes(msg) >= self.offload_bytes

    def holds(self, peer: Peer) -> bool:
        """Messages from this client must wait (its upload is in flight, or others wait)."""
        return peer.identity in self.in_flight or bool(self.waiting.get(peer.identity))

    def wait(self, peer: Peer, msg: Message) -> bool:
        """Queue a message behind the client's upload; False when too many messages or bytes
        already wait."""
        queue = self.waiting.setdefault(peer.identity, deque())
        size = self._waiting_bytes.get(peer.identity, 0) + waiting_bytes(msg)
        if len(queue) >= self.max_waiting or size > self.max_waiting_bytes:
            return False
        queue.append((peer, msg))
        self._waiting_bytes[peer.identity] = size
        return True

    def start(self, peer: Peer, msg: Submit) -> None:
        self.in_flight[peer.identity] = msg
        self._pool.submit(self._run, peer, msg)

    def _run(self, peer: Peer, msg: Submit) -> None:
        staged = stage(msg, self.submits, self.store)
        if self.closed:
            staged.discard()
            return
        self._done.put(Finished(peer, msg, staged))
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full of wake-ups already (or closed): the loop will look

    def finished(self) -> Iterator[Finished]:
        """Uploads that have finished since the last call (on the loop)."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                done = self._done.get_nowait()
            except Empty:
                return
            self.in_flight.pop(done.peer.identity, None)
            yield done

    def next_waiting(self, peer: Peer) -> tuple[Peer, Message] | None:
        """The client's next waiting message, unless a new upload of its holds the rest."""
        queue = self.waiting.get(peer.identity)
        if peer.identity in self.in_flight or not queue:
            return None
        item = queue.popleft()
        self._waiting_bytes[peer.identity] -= waiting_bytes(item[1])
        if not queue:
            del self.waiting[peer.identity]
            del self._waiting_bytes[peer.identity]
        return item

    def close(self) -> None:
        """Wait for uploads being written and remove what they staged (their clients had no
        reply: they submit again, and the job id makes that harmless)."""
        if self.closed:
            return
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        for done in self.finished():
            done.staged.discard()
        os.close(self._wake_r)
        os.close(self._wake_w)
