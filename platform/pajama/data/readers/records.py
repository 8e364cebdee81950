"""Readers of RedPajama-style records, `{"text": ..., "meta": {...}}` plus any other fields: jsonl
(line by line), parquet and the Arrow files of a `datasets` dataset saved to disk (row by row),
and the parquet or jsonl data files of a dataset on the Hugging Face Hub."""

import io
import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pajama.data.readers.common import BATCH_ROWS, DocumentFiles, Rejected, document_row, meta_json
from pajama.data.slices import SET_NAME_TO_SLICE


def _record_document(
    record, doc_id: str, where: str, slice_name: str | None, text_column: str, problem: str | None = None
) -> dict | Rejected:
    """A RedPajama-style record {text, meta, ...}: fields besides text and meta join meta.

    `problem` rejects a record that could be parsed only in part (its text and slice are kept)."""
    if not isinstance(record, dict):
        return Rejected(doc_id, where, problem or f"a JSON object was expected, got {type(record).__name__}",
                        slice_name, json.dumps(record, ensure_ascii=False, default=str))
    record = dict(record)
    text = record.pop(text_column, None)
    recovered = text if isinstance(text, str) else ""
    meta = record.pop("meta", None)
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return Rejected(doc_id, where, problem or "'meta' is a string that is not JSON", slice_name, recovered)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        return Rejected(doc_id, where, problem or f"'meta' must be an object, got {type(meta).__name__}",
                        slice_name, recovered)
    meta = {**meta, **record}  # e.g. RedPajama-1T CommonCrawl's pred_label and source
    if slice_name is None:
        set_name = meta.get("redpajama_set_name")
        slice_name = SET_NAME_TO_SLICE.get(set_name)
        if slice_name is None:
            problem = problem or f"meta.redpajama_set_name is {set_name!r}, not a RedPajama set; pass slice_name"
    if problem is None and not isinstance(text, str):
        problem = f"no string {text_column!r} field (set text_column= if the text is elsewhere)"
    if problem is None and not text.strip():
        problem = f"{text_column!r} is empty or whitespace only"
    if problem is not None:
        return Rejected(doc_id, where, problem, slice_name, recovered, meta_json(meta))
    return document_row(doc_id, slice_name, text, meta)


class _JsonlDocuments(DocumentFiles):
    EXTENSIONS = [f"{kind}{compression}" for kind in ("jsonl", "json") for compression in ("", ".gz", ".zst", ".bz2")]
    LOCATOR = "line"

    def __init__(self, paths, *, text_column: str, **kwargs):
        super().__init__(paths, **kwargs)
        self._text_column = text_column

    def _documents(self, f, path):
        line_number = 0
        try:
            for line_number, line in enumerate(io.BufferedReader(f), start=1):
                if line.strip():
                    yield self._line_document(line, f"{path}#{line_number}", f"line {line_number}")
        except (OSError, EOFError) as error:  # a truncated or corrupt compressed file
            line_number += 1
            yield Rejected(f"{path}#{line_number}", f"line {line_number}",
                           f"the file breaks off after line {line_number - 1} ({error}); "
                            "it may be truncated or corrupt", self._slice_name)

    def _line_document(self, line: bytes, doc_id: str, where: str) -> dict | Rejected:
        try:
            text = line.decode("utf-8")
            problem = None
        except UnicodeDecodeError as error:
            # Parse what the replacement characters leave, to keep the record's text and slice.
            text, problem = line.decode("utf-8", errors="replace"), f"not valid UTF-8 ({error})"
        try:
            record = json.loads(text)
        except ValueError as error:
            return Rejected(doc_id, where, problem or f"not JSON ({error})", self._slice_name, text)
        return _record_document(record, doc_id, where, self._slice_name, self._text_column, problem)


class _TableDocuments(DocumentFiles):
    """Files of record batches (parquet, Arrow IPC streams); each row is a record."""

    def __init__(self, paths, *, text_column: str, **kwargs):
        super().__init__(paths, **kwargs)
        self._text_column = text_column

    def _record_batches(self, f) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    LOCATOR = "row"

    def _documents(self, f, path):
        row = 0
        try:
            for batch in self._record_batches(f):
                for record in batch.to_pylist():
                    yield _record_document(record, f"{path}#{row}", f"row {row}", self._slice_name,
                                           self._text_column)
                    row += 1
        except (OSError, pa.ArrowInvalid) as error:
            yield Rejected(f"{path}#{row}", f"row {row}", f"the file breaks off after {row} row(s) ({error}); "
                           "it may be truncated or corrupt", self._slice_name)


class _ParquetDocuments(_TableDocuments):
    EXTENSIONS = ["parquet"]

    def _open_file(self, filesystem, path, **open_args):
        return filesystem.open_input_file(path)  # parquet reads its footer first: random access

    def _record_batches(self, f):
        return pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS)


class _ArrowStreamDocuments(_TableDocuments):
    """The Arrow IPC stream files that `datasets` save_to_disk writes."""

    EXTENSIONS = ["arrow"]

    def _record_batches(self, f):
        return pa.ipc.open_stream(f)


def read_jsonl(paths, slice_name, *, policy, filesystem=None, text_column="text"):
    return ray.data.read_datasource(
        _JsonlDocuments(paths, slice_name=slice_name, policy=policy, filesystem=filesystem, text_column=text_column)
    )


def read_parquet(paths, slice_name, *, policy, filesystem=None, text_column="text"):
    return ray.data.read_datasource(
        _ParquetDocuments(paths, slice_name=slice_name, policy=policy, filesystem=filesystem, text_column=text_column)
    )


def read_hf_disk(paths, slice_name, *, policy, filesystem=None, text_column="text", split="train",
                 storage_options=None):
    import datasets

    if filesystem is not None:
        raise ValueError("hf_disk loads through datasets.load_from_disk: pass storage_options=, not filesystem=")
    data_files = []
    for path in [paths] if isinstance(paths, str) else paths:
        dataset = datasets.load_from_disk(path, storage_options=storage_options)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{path}: no split {split!r}; it has {', '.join(dataset)} (pass split=)")
            dataset = dataset[split]
        if text_column not in dataset.column_names:
            raise ValueError(
                f"{path}: no column {text_column!r}; it has {', '.join(dataset.column_names)} (pass text_column=)"
            )
        # save_to_disk writes plain Arrow stream files; reading them directly streams in parallel.
        data_files += [cache_file["filename"] for cache_file in dataset.cache_files]
    return ray.data.read_datasource(
        _ArrowStreamDocuments(data_files, slice_name=slice_name, policy=policy, text_column=text_column)
    )


def read_hf_hub(paths, slice_name, *, policy, filesystem=None, text_column="text", data_files="**/*.parquet",
                revision=None):
    """Read the data files of Hub datasets in parallel through HfFileSystem (stable per-file ids)."""
    if filesystem is None:
        from huggingface_hub import HfFileSystem

        filesystem = HfFileSystem()
    at_revision = f"@{revision}" if revision else ""
    files = sorted(
        file
        for name in ([paths] if isinstance(paths, str) else paths)
        for file in filesystem.glob(f"datasets/{name}{at_revision}/{data_files}")
    )
    parquet = [file for file in files if file.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"no file of {paths!r} matches data_files={data_files!r}")
    if parquet and len(parquet) != len(files):
        raise ValueError(f"data_files={data_files!r} matches parquet and other files; narrow it to one format")
    return (read_parquet if parquet else read_jsonl)(
        files, slice_name, policy=policy, filesystem=filesystem, text_column=text_column
    )
