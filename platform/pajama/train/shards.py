"""The training workers' input: each rank reads only its share of a folder of parquet shards.

A split (`<data artifact>/shards/train`, a fine-tuning stage's packed examples) is a folder of
parquet files, local or in object storage. The driver indexes it once per launch (`ShardIndex`):
its files in name order and the row count of each of their row groups, from the footers. Files in
name order, row groups in file order and rows in row-group order make the split's canonical order.

With N workers, rank r owns the contiguous rows [r*L, (r+1)*L) of the canonical order, L = rows // N
(the last rows mod N rows are in no share). It reads them in order, cut into micro-batches, and
after its last whole micro-batch starts over at its first row: its next epoch. Every rank consumes
one micro-batch per micro-step, so a rank's position in its stream, the rows it has consumed since
the run began, is the run's consumed sequences / N, and (epoch, row) follow by arithmetic.
Resuming bisects the row groups' cumulative counts for that row, opens that one file and starts at
that row group: what it costs does not depend on how far the run got.

Reading. Row groups are the unit read (the stages write them of ROW_GROUP_SEQUENCES sequences); a rank reads
the row groups that overlap its rows, and the one on a boundary between two ranks is read by both,
so a rank reads at most two row groups more than its share. A training split needs at least one
row group per worker (`check_training_split`). The next row group is read in a background thread
while the current one is consumed.
"""

from __future__ import annotations

import bisect
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pajama import storage

FOOTER_THREADS = 16
# What the stages that write training splits put in a parquet row group: small enough that ranks
# split a folder evenly, large enough that a row group is one efficient read.
ROW_GROUP_SEQUENCES = 256


@dataclass(frozen=True)
class ShardIndex:
    """The parquet files under `uri` (names relative to it, in order) and their row groups' row counts."""

    uri: str
    files: tuple[str, ...]
    row_groups: tuple[tuple[int, ...], ...]  # per file, the rows of each of its row groups

    @classmethod
    def build(cls, uri: str) -> "ShardIndex":
        """Index the parquet files under `uri` from their footers, read in parallel."""
        uri = str(uri)
        fs, root = storage.filesystem(uri)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        names = sorted(i.path[len(root):].lstrip("/") for i in infos
                       if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
        if not names:
            raise FileNotFoundError(f"no parquet files under {uri}")

        def row_groups(name: str) -> tuple[int, ...]:
            with fs.open_input_file(storage.join(root, name)) as f:
                meta = pq.ParquetFile(f).metadata
                return tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))

        with ThreadPoolExecutor(FOOTER_THREADS) as pool:
            return cls(uri, tuple(names), tuple(pool.map(row_groups, names)))

    @cached_property
    def units(self) -> list[tuple[int, int]]:
        """(file, row group) of every row group, in the canonical order."""
        return [(f, g) for f, groups in enumerate(self.row_groups) for g in range(len(groups))]

    @cached_property
    def starts(self) -> list[int]:
        """The canonical row each unit starts at, then the total number of rows."""
        starts = [0]
        for groups in self.row_groups:
            for rows in groups:
                starts.append(starts[-1] + rows)
        return starts

    @property
    def num_rows(self) -> int:
        return self.starts[-1]


def rank_rows(index: ShardIndex, rank: int, world: int, batch_rows: int) -> range:
    """The canonical rows rank `rank` of `world` consumes every epoch: its share, less the ragged
    tail that does not fill a micro-batch of `batch_rows`."""
    share = index.num_rows // world
    if share < batch_rows:
        raise ValueError(f"{index.uri} holds {index.num_rows} sequences, fewer than one micro-batch per worker "
                         f"({world} x {batch_rows}): lower micro_batch_size or scaling.num_workers")
    start = rank * share
    return range(start, start + share - share % batch_rows)


def check_training_split(index: ShardIndex, world: int, batch_rows: int) -> None:
    """Refuse, naming the config fields, a training split too small for `world` workers."""
    if len(index.units) < world:
        raise ValueError(f"{index.uri} holds {len(index.units)} parquet row groups, fewer than scaling.num_workers "
                         f"({world}), so workers would read each other's rows: lower scaling.num_workers, or "
                         f"write the split in more row groups (pretraining: lower data.sequences_per_shard; "
                         f"fine-tuning: lower micro_batch_size or add examples)")
    rank_rows(index, 0, world, batch_rows)


def read_rows(index: ShardIndex, start: int, stop: int) -> Iterator[pa.Table]:
    """The canonical rows [start, stop), a table per row group they touch; only those row groups
    are read."""
    fs, root = storage.filesystem(index.uri)
    opened: dict[int, pq.ParquetFile] = {}

    def load(unit: int) -> pa.Table:
        file, group = index.units[unit]
        if file not in opened:
            opened.clear()  # units are read in order: a file is done once the next one is opened
            opened[file] = pq.ParquetFile(fs.open_input_file(storage.join(root, index.files[file])))
        return opened[file].read_row_group(group)

    unit = bisect.bisect_right(index.starts, start) - 1
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, unit) if start < stop else None
        while pending is not None:
            table = pending.result()
            first, nxt = index.starts[unit], unit + 1
            pending = pool.submit(load, nxt) if index.starts[nxt] < stop else None
            lo, hi = max(start, first) - first, min(stop, index.starts[nxt]) - first
            yield table.slice(lo, hi - lo)
            unit = nxt


def _cut(tables: Iterator[pa.Table], batch_rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `batch_rows` rows from a stream of tables whose total is a multiple of it."""
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        while table.num_rows:
            take = min(batch_rows - held, table.num_rows)
            pending.append(table.slice(0, take))
            table, held = table.slice(take), held + take
            if held == batch_rows:
                yield pa.concat_tables(pending) if len(pending) > 1 else pending[0]
                pending, held = [], 0


def batches(index: ShardIndex, rank: int, world: int, batch_rows: int, position: int) -> Iterator[pa.Table]:
    """Rank `rank`'s endless stream of micro-batches of `batch_rows` rows, starting `position`
    rows into it (a multiple of `batch_rows`: the rows the rank consumed before a resume)."""
    rows = rank_rows(index, rank, world, batch_rows)
    offset = position % len(rows)
    while True:
        yield from _cut(read_rows(index, rows.start + offset, rows.stop), batch_rows)
        offset = 0


def head(index: ShardIndex, rank: int, world: int, batch_rows: int, max_batches: int) -> list[pa.Table]:
    """The first `max_batches` micro-batches of rank `rank`'s share (fewer if the share is smaller),
    for evaluation; an empty list when the share holds no whole micro-batch."""
    share = index.num_rows // world
    n = min(max_batches, share // batch_rows) * batch_rows
    return list(_cut(read_rows(index, rank * share, rank * share + n), batch_rows))
