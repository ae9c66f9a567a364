"""The policy directory watcher notices changes through inotify without
waiting for its poll, and still finds them by polling alone."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from agent.adapters.policy_directory import Changes, DirectoryWatcher


async def _watch(directory: Path, interval: float) -> tuple[DirectoryWatcher, asyncio.Queue[Changes], asyncio.Task]:
    seen: asyncio.Queue[Changes] = asyncio.Queue()

    async def on_change(changes: Changes) -> None:
        await seen.put(changes)

    watcher = DirectoryWatcher(directory, on_change, interval=interval)
    task = asyncio.create_task(watcher.run())
    return watcher, seen, task


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_renamed_in_file_is_seen_long_before_the_next_poll(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("first")
    _, seen, task = await _watch(tmp_path, interval=600)
    try:
        first = await asyncio.wait_for(seen.get(), 5)
        assert first.changed == {tmp_path / "a.yaml"}
        tmp = tmp_path / ".b.yaml.tmp"
        tmp.write_text("second")
        os.replace(tmp, tmp_path / "b.yaml")
        # The poll would come in ten minutes: only inotify can wake it now.
        got = await asyncio.wait_for(seen.get(), 5)
        assert got.changed == {tmp_path / "b.yaml"} and not got.removed
        (tmp_path / "a.yaml").unlink()
        got = await asyncio.wait_for(seen.get(), 5)
        assert got.removed == {tmp_path / "a.yaml"}
    finally:
        await _stop(task)


async def test_a_directory_made_later_is_found_by_polling(tmp_path: Path) -> None:
    later = tmp_path / "later"
    _, seen, task = await _watch(later, interval=0.05)
    try:
        later.mkdir()
        (later / "p.yaml").write_text("x")
        got = await asyncio.wait_for(seen.get(), 5)
        assert got.changed == {later / "p.yaml"}
    finally:
        await _stop(task)
