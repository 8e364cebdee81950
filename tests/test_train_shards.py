"""The training workers' sharded reader (`pajama.train.shards`): each rank's share of a folder of
parquet shards, its determinism, resuming at any position without repeating or skipping a row and
without reading what came before, epoch wrap-around, evaluation's head, the errors that name the
config field, and the same reads from an S3 server."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pajama import storage
from pajama.train import shards
from pajama.train.loop import _to_tensors

SEQ_LEN = 4


def write_split(directory, rows_per_file: list[int], row_group_size: int) -> str:
    """Parquet files of `seq_index` (the row's canonical position) and `input_ids`; returns the URI."""
    directory.mkdir(parents=True, exist_ok=True)
    first = 0
    for i, rows in enumerate(rows_per_file):
        index = np.arange(first, first + rows)
        ids = np.repeat(index, SEQ_LEN).astype(np.int32).reshape(rows, SEQ_LEN)
        pq.write_table(pa.table({"input_ids": pa.array(list(ids), type=pa.list_(pa.int32())),
                                 "seq_index": pa.array(index, pa.int64())}),
                       directory / f"{i:05d}.parquet", row_group_size=row_group_size)
        first += rows
    return str(directory)


def rows_of(tables) -> list[list[int]]:
    return [t.column("seq_index").to_pylist() for t in tables]


@pytest.fixture
def split(tmp_path):
    # 3 files of uneven sizes, row groups of 10 rows (the last of each file shorter): 103 rows.
    return shards.ShardIndex.build(write_split(tmp_path / "train", [37, 41, 25], 10))


def test_the_index_holds_every_file_and_row_group_in_name_order(split):
    assert split.files == ("00000.parquet", "00001.parquet", "00002.parquet")
    assert split.row_groups == ((10, 10, 10, 7), (10, 10, 10, 10, 1), (10, 10, 5))
    assert split.num_rows == 103 and len(split.units) == 12


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_get_equal_disjoint_contiguous_shares_and_read_only_the_row_groups_they_overlap(split, world):
    micro = 4
    share = 103 // world
    seen = []
    for rank in range(world):
        rows = shards.rank_rows(split, rank, world, micro)
        assert rows == range(rank * share, rank * share + share - share % micro)
        tables = list(shards.read_rows(split, rows.start, rows.stop))
        # One table per row group read: those overlapping the share, never more.
        overlapping = [u for u in range(len(split.units))
                       if split.starts[u] < rows.stop and split.starts[u + 1] > rows.start]
        assert len(tables) == len(overlapping)
        seen += [i for t in tables for i in t.column("seq_index").to_pylist()]
    assert seen == sorted(set(seen)), "shares overlap or are out of order"
    assert 103 - len(seen) < world * (micro + 1)


def test_one_worker_reads_the_canonical_order_and_wraps_to_the_next_epoch_without_the_ragged_tail(split):
    stream = shards.batches(split, 0, 1, batch_rows=25, position=0)
    batches = rows_of(itertools.islice(stream, 6))
    assert batches[:4] == [list(range(i * 25, (i + 1) * 25)) for i in range(4)]  # rows 100..102 dropped
    assert batches[4:] == batches[:2]


def test_the_stream_is_deterministic(split):
    one = rows_of(itertools.islice(shards.batches(split, 1, 3, 4, 0), 20))
    two = rows_of(itertools.islice(shards.batches(split, 1, 3, 4, 0), 20))
    assert one == two


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 1), (3, 2), (4, 0)])
@pytest.mark.parametrize("consumed_batches", [0, 1, 3, 7, 8, 9, 25])
def test_resuming_at_any_position_continues_exactly_where_the_run_stopped(split, world, rank, consumed_batches):
    micro = 4
    uninterrupted = rows_of(itertools.islice(shards.batches(split, rank, world, micro, 0), 40))
    resumed = rows_of(itertools.islice(shards.batches(split, rank, world, micro, consumed_batches * micro),
                                       40 - consumed_batches))
    assert resumed == uninterrupted[consumed_batches:]


def test_resuming_reads_one_row_group_ahead_whatever_the_position(split, monkeypatch):
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, *a, **k: reads.append(i) or real(self, i))
    for position in (0, 40, 96, 100 * 4 * 1000):
        reads.clear()
        next(shards.batches(split, 0, 1, 4, position))
        assert len(reads) <= 2, f"at position {position} the first batch read {len(reads)} row groups"


def test_evaluation_takes_the_first_micro_batches_of_each_share(split):
    assert rows_of(shards.head(split, 1, 2, 4, 2)) == [[51, 52, 53, 54], [55, 56, 57, 58]]
    assert len(shards.head(split, 0, 2, 4, 100)) == 51 // 4
    assert shards.head(split, 0, 30, 4, 2) == []  # a share smaller than a micro-batch: nothing to score


def test_too_few_row_groups_or_rows_for_the_workers_are_errors_naming_the_config_fields(tmp_path, split):
    small = shards.ShardIndex.build(write_split(tmp_path / "small", [30], 30))
    with pytest.raises(ValueError, match=r"1 parquet row groups, fewer than scaling.num_workers \(2\).*"
                                         r"data.sequences_per_shard"):
        shards.check_training_split(small, 2, 4)
    with pytest.raises(ValueError, match=r"103 sequences, fewer than one micro-batch per worker \(12 x 9\).*"
                                         r"micro_batch_size or scaling.num_workers"):
        shards.check_training_split(split, 12, 9)
    shards.check_training_split(split, 12, 8)
    with pytest.raises(FileNotFoundError, match="no parquet files under"):
        shards.ShardIndex.build(str(tmp_path / "nothing"))


def test_micro_batches_become_tensors_and_ragged_sequences_are_refused():
    table = pa.table({"input_ids": pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int32())),
                      "slice_id": pa.array([0, 1], pa.int16())})
    tensors = _to_tensors(pa.concat_tables([table.slice(0, 1), table.slice(1, 1)]))
    assert tensors["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]] and tensors["slice_id"].tolist() == [0, 1]
    tensors["input_ids"] += 1  # writable, not aliasing Arrow memory
    ragged = pa.table({"input_ids": pa.array([[1, 2, 3], [4, 5]], pa.list_(pa.int32()))})
    with pytest.raises(ValueError, match="input_ids holds sequences of different lengths"):
        _to_tensors(ragged)


def test_shards_on_an_s3_server_read_like_local_ones(s3_server, tmp_path, monkeypatch, split):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    uri = storage.join(s3_server.bucket("shards"), "train")
    storage.upload_dir(tmp_path / "train", uri)
    remote = shards.ShardIndex.build(uri)
    assert (remote.files, remote.row_groups) == (split.files, split.row_groups)
    expected = rows_of(itertools.islice(shards.batches(split, 1, 2, 4, 28), 10))
    assert rows_of(itertools.islice(shards.batches(remote, 1, 2, 4, 28), 10)) == expected
