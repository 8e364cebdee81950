"""Pretraining across two Ray nodes (both on this machine) with checkpoints on shared storage.

`ray.cluster_utils.Cluster` starts a head and a second node, each with 3 CPUs; a training worker
asks for 2, so no node can hold both workers and Ray Train places one on each, while the CPU left
on every node runs the Ray Data read tasks that feed them. Storage is a directory both nodes see,
as a shared filesystem (or a bucket) is on a real cluster.
"""

from __future__ import annotations

import json

import pytest
import ray
from pretrain_fixtures import checkpoint_shapes, make_data_artifact, read_trace, run_checkpoints, run_pretrain, tiny_pretrain_config
from ray.cluster_utils import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    cluster.add_node(num_cpus=3)
    ray.init(address=cluster.address)
    context = ray.data.DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, False
    cluster.wait_for_nodes()
    yield cluster
    context.enable_progress_bars = bars
    ray.shutdown()
    cluster.shutdown()


def test_workers_on_two_nodes_checkpoint_every_rank_to_shared_storage(two_nodes, tmp_path):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    data = make_data_artifact(tmp_path / "data")
    cfg = tiny_pretrain_config(2, micro_batch_size=4, max_steps=6, checkpoint_every=3, eval_every=6,
                               scaling={"num_workers": 2, "cpus_per_worker": 2})
    trace = tmp_path / "trace"
    result = run_pretrain(cfg, data, tmp_path, "two-nodes", PAJAMA_TRACE_DIR=str(trace))

    records = read_trace(trace)
    node_of_rank = {r["rank"]: r["node_id"] for r in records}
    assert set(node_of_rank) == {0, 1}
    assert node_of_rank[0] != node_of_rank[1], "both workers ran on one node"
    assert set(node_of_rank.values()) <= {n["NodeID"] for n in ray.nodes()}

    checkpoints = run_checkpoints(tmp_path, "two-nodes")
    assert len(checkpoints) == 2  # step 3, and the final one (step 6) with the export
    for checkpoint in checkpoints:
        # One checkpoint directory holds what each node wrote: both ranks' state (RNG; DDP's
        # replicated weights and optimiser state once, in rank 0's).
        shapes = checkpoint_shapes(checkpoint)
        assert set(shapes) == {"state-0.safetensors", "state-1.safetensors"}
        assert set(shapes["state-1.safetensors"]) == {"rng"} and len(shapes["state-0.safetensors"]) > 1
    assert json.loads((checkpoints[0] / "train_state.json").read_text())["step"] == 3
    assert (checkpoints[-1] / "hf" / "model.safetensors").exists()
    assert result["final_metrics"]["step"] == 6
    assert (tmp_path / "two-nodes" / "model" / "config.json").exists()
