"""The data stage on object storage (a moto S3 server): Ray tasks write its outputs and phase markers
straight into the bucket, the shards there are byte-identical to a local run's, and a re-run with
a new local folder resumes from what the bucket holds, tokenizer included."""

from __future__ import annotations

import logging
import os
import random

import pytest

from pajama import storage
from pajama.config import DataConfig

from conftest import run_data_stages
from test_data_bad_input import _record, _words

BUCKET = "pajama-data"
PREFIX = "project/artifacts/data/test"


@pytest.fixture(scope="module")
def s3_env(s3_server):
    """The S3 server's endpoint and keys in the environment, set before `ray_session` starts Ray so
    that its workers inherit them."""
    saved = {name: os.environ.get(name) for name in s3_server.env}
    os.environ.update(s3_server.env)
    yield s3_server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture()
def config(tmp_path) -> DataConfig:
    """Two slices of generated prose with exact and near duplicates: every phase has work to do."""
    rng = random.Random(0)
    texts = [_words(rng, 80) for _ in range(120)]
    texts += texts[:5] + [text.replace("the", "a", 1) for text in texts[5:10]]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"".join(_record(text, "RedPajamaC4" if i % 3 else "RedPajamaBook")
                                for i, text in enumerate(texts)))
    return DataConfig(sources=[{"format": "jsonl", "path": str(corpus)}], filters=["gopher"],
                      tokenizer={"vocab_size": 300, "sample_documents": 200}, seq_len=16, eval_fraction=0.2,
                      sequences_per_shard=256, shuffle_partitions=2, shuffle_strategy="sort_shuffle_pull_based")


def _local_shards(out) -> dict[str, bytes]:
    return {str(f.relative_to(out / "shards")): f.read_bytes()
            for f in sorted((out / "shards").rglob("*")) if f.is_file()}


def _bucket_shards(s3) -> dict[str, bytes]:
    prefix = f"{PREFIX}/shards/"
    return {key.removeprefix(prefix): s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
            for key in s3.keys(BUCKET, prefix)}


def test_data_stage_on_object_storage_writes_the_shards_of_a_local_run_and_resumes(
        s3_env, ray_session, tmp_path, config, caplog):
    local = tmp_path / "local"
    local.mkdir()
    expected = run_data_stages(config, local, tmp_path)

    root = f"{s3_env.bucket(BUCKET)}/project"
    out_uri = f"{root}/artifacts/data/test"
    first = tmp_path / "first"
    first.mkdir()
    manifest = run_data_stages(config, first, root, out_uri=out_uri)

    local_shards = _local_shards(local)
    assert sum(name.startswith("train/") for name in local_shards) > 1 and "eval/00000.parquet" in local_shards
    assert _bucket_shards(s3_env) == local_shards
    assert manifest["stats"] == expected["stats"]
    # ("": the empty marker object pyarrow keeps for the artifact's own folder.)
    folders = {key.removeprefix(f"{PREFIX}/").split("/")[0] for key in s3_env.keys(BUCKET, f"{PREFIX}/")}
    assert folders - {""} == {"documents", "deduped", "quarantine", "tokenizer", "shards", "_phases"}
    # The driver's small files wait in the local folder for the commit to upload them.
    assert {"stats.json", "report.md", "report.png", "tokenizer"} <= {p.name for p in first.iterdir()}

    # Killed while packing: the packing marker is missing and part of the shards is left.
    storage.delete(f"{out_uri}/_phases/packing.json")
    storage.delete(f"{out_uri}/shards/train/00000.parquet")
    again = tmp_path / "again"
    again.mkdir()
    with caplog.at_level(logging.INFO, logger="pajama.data.stage"):
        resumed = run_data_stages(config, again, root, out_uri=out_uri)
    messages = [r.getMessage() for r in caplog.records if r.name == "pajama.data.stage"]
    assert "data: resuming: selection, dedup, quarantine, tokenizer done in an earlier attempt" in messages
    assert "data: tokenizer" not in messages and "data: tokenizing and packing" in messages
    assert _bucket_shards(s3_env) == local_shards
    assert resumed["stats"] == expected["stats"]
    tokenizer = "tokenizer/tokenizer.json"
    assert (again / tokenizer).read_bytes() == (local / tokenizer).read_bytes()  # downloaded for the commit
