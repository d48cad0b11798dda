"""The hot swap in-process: a model host on a real SQLite registry, no server around it."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

from aimesh.config import Settings
from aimesh.registry import LocalRegistry, push_model
from aimesh.serving import BatchingOptions, ModelHost, ModelRef


def test_a_swap_frees_the_retired_version_though_the_heap_was_frozen(
    tmp_path: Path, fraud_skops: Path
) -> None:
    registry = LocalRegistry.from_settings(Settings(home=tmp_path), actor="test")
    push_model(registry, "fraud", fraud_skops, aliases=["champion"])
    push_model(registry, "fraud", fraud_skops)

    async def main() -> None:
        host = ModelHost(registry, ModelRef.parse("fraud@champion"), batching=BatchingOptions())
        first = await host.start()
        first.__dict__["itself"] = first  # a cycle, as most models' object graphs hold
        retired = weakref.ref(first)
        del first
        gc.freeze()  # as the server does once the model is loaded
        try:
            registry.set_alias("fraud", "champion", 2)
            await host.refresh()
            assert host.current.version.version == 2
            assert retired() is None
            assert gc.get_freeze_count() > 0  # the heap is frozen again after the swap
        finally:
            gc.unfreeze()
            await host.close()

    asyncio.run(main())
