"""Pack encoded rows into blocks, per split, and hand full blocks to the shard writer.

Rows arrive in the order they were encoded; a block is cut at `block_rows` rows (or
when the segment ends), made by lake.blocks.make_block (which stores each member as its
dtype: float16 embeddings, int16 labels) and queued for the background writer thread.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lake.blocks import make_block


class BlockPacker:
    def __init__(self, block_rows: int, emit: Callable[[str, dict], None], with_caption: bool):
        self.block_rows, self.emit, self.with_caption = block_rows, emit, with_caption
        self._rows: dict[str, list[tuple]] = {}

    def add(self, split: str, audio: np.ndarray, text: np.ndarray, caption: np.ndarray | None, label: int,
            meta: dict) -> None:
        """One row: audio [L, Da], text [Dt], caption [Dt] (or None), label id, its meta (lake.blocks.row_meta)."""
        rows = self._rows.setdefault(split, [])
        rows.append((audio, text, caption, label, meta))
        if len(rows) >= self.block_rows:
            self._emit(split)

    def _emit(self, split: str) -> None:
        rows = self._rows.pop(split, [])
        if not rows:
            return
        audio, text, caption, label, meta = zip(*rows)
        arrays = {"audio": audio, "text": text, "label": label} | ({"caption": caption} if self.with_caption else {})
        self.emit(split, make_block(arrays, meta))

    def flush(self) -> None:
        for split in list(self._rows):
            self._emit(split)
