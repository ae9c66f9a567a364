"""`ciliate monitor -o json` in a subprocess, for tests: subscribed before the
constructor returns (it waits for the monitor's own `Listening for flow
events` line on stderr, never for the clock), events collected as they
come, and waits that end when what a test expects has arrived."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


class MonitorProc:
    def __init__(self, socket: Path, *args: str, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "monitor", *args, "-o", "json", "--socket", str(socket)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._readers = [threading.Thread(target=self._read_events, daemon=True), threading.Thread(target=self._read_notes, daemon=True)]
        for t in self._readers:
            t.start()
        if not self._listening.wait(timeout):
            self.stop()
            raise AssertionError(f"ciliate monitor did not subscribe within {timeout:.0f} s")

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._events.append(event)

    def _read_notes(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "Listening for flow events" in line:
                self._listening.set()

    def events(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def wait_for(self, done: Callable[[list[dict]], object], timeout: float = 30.0) -> list[dict]:
        """The events so far, once `done(events)` holds or `timeout` passed
        (the caller's assertions then say what is missing)."""
        deadline = time.monotonic() + timeout
        while not done(got := self.events()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    def stop(self) -> list[dict]:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for t in self._readers:
            t.join(timeout=5)
        return self.events()
