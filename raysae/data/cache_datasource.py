"""Ray Data source over an activation cache: one read task per shard, blocks of ``block_rows`` rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raysae.data.batching import META_COLUMNS

if TYPE_CHECKING:
    from raysae.data.reader import ActivationCache


class CacheDatasource(Datasource):
    """Rows of an ``ActivationCache``: a float32 column [d] per hook plus int64 metadata columns."""

    def __init__(self, cache: ActivationCache, shuffle: bool = False, seed: int = 0, block_rows: int = 8192):
        super().__init__()
        self.cache = cache
        self.shuffle = shuffle
        self.seed = seed
        self.block_rows = block_rows

    def _row_bytes(self) -> int:
        return 4 * self.cache.d_model * len(self.cache.hooks) + 8 * len(META_COLUMNS)

    def estimate_inmemory_data_size(self) -> int | None:
        return self.cache.rows * self._row_bytes()

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        cache, shuffle, seed, block_rows = self.cache, self.shuffle, self.seed, self.block_rows
        tasks = []
        for index in cache.shard_order(shuffle, seed):
            shard = cache.manifest.shards[index]

            def read(index: int = index) -> Iterator:
                cols = cache.numpy_rows(index, shuffle=shuffle, seed=seed)
                n = len(cols["token_id"])
                for start in range(0, n, block_rows):
                    yield BlockAccessor.batch_to_block(
                        {c: v[start : start + block_rows] for c, v in cols.items()}
                    )

            meta = BlockMetadata(
                num_rows=shard.rows,
                size_bytes=shard.rows * self._row_bytes(),
                exec_stats=None,
                input_files=[str(cache.path / shard.file)],
            )
            tasks.append(ReadTask(read, meta))
        return tasks
