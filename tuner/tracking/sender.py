"""A thread on the driver that sends a search's MLflow writes, so that Ray's loop only records them.

Sending a write to MLflow (a SQLite commit, an HTTP request) takes milliseconds to seconds; Ray
Tune calls the tracking callback from its one event loop, and a trial's next epoch waits until the
loop has handled its last report. With a ``Sender`` the callback only appends the write to the
write-ahead file (``TrackingWriter.record``) and returns; this thread sends the queue in order, in
fewer and larger writes when it fell behind. Nothing is lost by sending later: what the thread has
not sent is in the file, and the next driver (``tuner resume``) sends it. ``TrackingWriter.close``
stops the thread and sends the rest; so does the interpreter's exit, for a driver that ends
without Ray's end-of-experiment hook.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0  # at exit, how long to wait for a send in flight before leaving it to the file


class Sender:
    """Sends ``writer``'s queue whenever something is recorded (or a retry is due) until stopped."""

    def __init__(self, writer) -> None:
        self.writer = writer
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mlflow-sender-{writer.search_name}",
                                        daemon=True)

    @classmethod
    def start(cls, writer) -> "Sender":
        sender = cls(writer)
        writer.sender = sender
        atexit.register(sender._at_exit)
        sender._thread.start()
        return sender

    def wake(self) -> None:
        self._wakeup.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            # After a failed send, sleep until the retry is due (or a stop) instead of spinning.
            delay = self.writer.retry_at - time.monotonic()
            self._wakeup.wait(timeout=delay if delay > 0 else None)
            self._wakeup.clear()
            if self._stopping.is_set():
                break
            try:
                self.writer.flush()
            except Exception:  # a bug must not kill the thread silently: the writes stay queued
                log.exception("sending MLflow writes of search %s failed; they stay in %s",
                              self.writer.search_name, self.writer.pending_path)
                self._stopping.wait(timeout=5.0)

    def stop(self) -> None:
        """Ends the thread after the send in flight; the caller sends what is left."""
        atexit.unregister(self._at_exit)
        self._stopping.set()
        self._wakeup.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_TIMEOUT_S)
        self.writer.sender = None

    def _at_exit(self) -> None:
        """A driver leaving without ``close`` (interrupted, say) still sends what it can."""
        self.stop()
        self.writer.flush(force=True)
