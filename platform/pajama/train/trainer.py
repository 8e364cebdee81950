"""The driver side of training: a Ray Train V2 TorchTrainer around `loop.train_loop_per_worker`.

The run is named after the stage's fingerprint under `<storage>/ray_train/`, so relaunching the
same stage (after a crash or a killed job) finds the run's checkpoints there and resumes from the
latest one; FailureConfig retries worker failures in place from the last checkpoint. The
training and evaluation splits are folders of parquet shards (local or object-store URIs): the
driver indexes them (`shards.ShardIndex`, one footer read per file) and every worker reads its
own share of them (see loop.py), so Ray Data is not involved. Every worker gets the stage's
`TrainSpec`, its TrainingConfig section and the two indexes as they are (Ray pickles them to the
workers). The instrumentation variables of `trace.py` (PAJAMA_TRACE_DIR,
PAJAMA_TEST_FAIL_AT_STEP) are passed on to the workers when the driver has them set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from pajama import storage
from pajama.config import TrainingConfig
from pajama.train import shards
from pajama.train.loop import EXPORT_DIR, TrainSpec, train_loop_per_worker
from pajama.train.trace import FORWARDED_ENV


def fit(spec: TrainSpec, train_uri: str, eval_uri: str, training: TrainingConfig, storage_uri: str,
        run_name: str, export_to: Path) -> dict:
    """Train on the parquet shards under `train_uri`, evaluate on those under `eval_uri`, then copy
    the exported HF model into `export_to`. Returns the final metrics."""
    scaling = training.scaling
    train_index, eval_index = shards.ShardIndex.build(train_uri), shards.ShardIndex.build(eval_uri)
    shards.check_training_split(train_index, scaling.num_workers, training.micro_batch_size)
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "training": training, "train": train_index, "eval": eval_index},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name,
            # Checkpoints go to the project storage, local or object store (Ray Train writes there).
            storage_path=storage.join(storage_uri, "ray_train"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=training.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=training.max_failures),
            worker_runtime_env={"env_vars": {
                **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
                # Train V2 re-logs every print of a worker whose stdout is wrapped: each line twice.
                "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without an exported model")
    with result.checkpoint.as_directory() as path:
        if export_to.exists():
            shutil.rmtree(export_to)
        shutil.copytree(Path(path) / EXPORT_DIR, export_to)
    return dict(result.metrics or {})
