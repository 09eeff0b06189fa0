"""The crawl's image work runs off the calling thread, and the content store is safe to write
from several threads at once."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from spiders.images import ImageRejected, inspect_image
from spiders.record import CrawlRecord
from spiders.workpool import WorkPool


def test_work_runs_in_a_pool_thread_and_errors_propagate() -> None:
    async def main() -> tuple[str, str]:
        pool = WorkPool(threads=2)
        try:
            name = await pool.run(lambda: threading.current_thread().name)
            with pytest.raises(ImageRejected) as caught:
                await pool.run(inspect_image, b"<html></html>", "image/jpeg")
            return name, caught.value.reason
        finally:
            pool.close()

    name, reason = asyncio.run(main())
    assert name.startswith("crawl-work") and name != threading.current_thread().name
    assert reason == "bad_magic"


def test_concurrent_stores_of_the_same_bytes_leave_one_complete_file(tmp_path: Path) -> None:
    record = CrawlRecord(tmp_path / "out", state_dir=tmp_path / "state")
    record.store_dir.mkdir(parents=True)
    data = bytes(range(256)) * 4096  # 1 MiB: the writes overlap
    ids = [f"{i:02x}" * 32 for i in range(10)]
    barrier = threading.Barrier(8)

    def store(item_id: str) -> str:
        barrier.wait()
        return record.store_image(item_id, "png", data)

    with ThreadPoolExecutor(8) as pool:
        for item_id in ids:  # eight threads store each id at the same moment
            assert set(pool.map(store, [item_id] * 8)) == {f"images/{item_id}.png"}
    assert sorted(p.name for p in record.store_dir.iterdir()) == [f"{i}.png" for i in ids]
    assert all((record.store_dir / f"{i}.png").read_bytes() == data for i in ids)
