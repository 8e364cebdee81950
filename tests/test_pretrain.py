"""The base-model milestone on CPU: the Ray Train loop's data order (each worker reads its own share,
pajama.train.shards), parity across world sizes at the same global batch, fault tolerance, FSDP and
the Hugging Face export, on a ~60k-parameter GPT-NeoX and generated data.

Every run is the real pretrain stage (`run_pretrain_stage` -> `fit` -> TorchTrainer, gloo) on a
2-CPU local Ray; the loop's trace (`PAJAMA_TRACE_DIR`, see `pajama.train.trace`) records which
sequences each rank consumed at each step and the step's loss. All runs are fp32, 10 steps of a
global batch of 8 sequences, checkpointing every 4 steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
import torch
from pretrain_fixtures import (
    checkpoint_shapes,
    global_batch_order,
    last_attempt_by_step,
    make_data_artifact,
    read_trace,
    run_checkpoints,
    run_pretrain,
    tiny_pretrain_config,
)
from safetensors.torch import load_file

from pajama.train.trace import PROBE_FILE

pytestmark = pytest.mark.slow

STEPS, GLOBAL_BATCH, MICRO = 10, 8, 4
# fp32 on one machine: only the order of floating-point reductions differs between the runs.
LOSS_ATOL = 1e-5
LOGITS_ATOL = 1e-5


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False)
    context = ray.data.DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, False
    yield
    context.enable_progress_bars = bars
    ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    return root, make_data_artifact(root / "data")


def _run(work, name: str, cfg, tracking: dict | None = None, data=None, **env):
    root, data = work[0], data or work[1]
    trace = root / f"trace-{name}"
    result = run_pretrain(cfg, data, root, name, tracking, PAJAMA_TRACE_DIR=str(trace), **env)
    return result, read_trace(trace), trace


@pytest.fixture(scope="module")
def ddp2(ray_local, work):
    """The reference run: 2 workers, DDP, micro-batch 4."""
    return _run(work, "ddp2", tiny_pretrain_config(2, micro_batch_size=MICRO))


@pytest.fixture(scope="module")
def ddp1(ray_local, work):
    """1 worker, micro-batch 4, 2 accumulation steps, on the same rows put in the order in which one
    worker reads `ddp2`'s global batches; it also logs to an MLflow run, as the DAG's pretrain stage
    does."""
    from mlflow.tracking import MlflowClient

    root, data = work
    order = global_batch_order(data.manifest["train_rows"], world=2, micro=MICRO)
    interleaved = make_data_artifact(root / "data-interleaved", train_order=order)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("pretrain-tests")).info.run_id
    result = _run(work, "ddp1", tiny_pretrain_config(1, micro_batch_size=MICRO), {"uri": uri, "run_id": run_id},
                  data=interleaved)
    return (*result, client.get_run(run_id).data.metrics, client.get_metric_history(run_id, "loss"))


def _global_steps(records: list[dict], world: int) -> dict[int, tuple[list[int], float]]:
    """Per step: the global batch's sequence ids (rank order) and the loss, from the latest attempt."""
    by_rank = [last_attempt_by_step(records, r) for r in range(world)]
    return {s: ([i for r in range(world) for i in by_rank[r][s]["seq_index"]], by_rank[0][s]["loss"])
            for s in sorted(by_rank[0])}


def _share_rows(work, rank: int, step: int) -> list[int]:
    """The rows rank `rank` of 2 consumes at `step` (micro-batch 4, no accumulation): its half of the
    training rows is contiguous and read in order."""
    share = work[1].manifest["train_rows"] // 2
    return list(range(rank * share + (step - 1) * MICRO, rank * share + step * MICRO))


def test_each_worker_reads_its_own_half_in_order(ddp2, work):
    two = _global_steps(ddp2[1], 2)
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in two:
        assert two[step][0] == _share_rows(work, 0, step) + _share_rows(work, 1, step)


def test_two_workers_match_one_worker_at_the_same_global_batch(ddp1, ddp2):
    (res1, trace1, _, mlflow_metrics, mlflow_loss), (res2, trace2, _) = ddp1, ddp2
    one, two = _global_steps(trace1, 1), _global_steps(trace2, 2)
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    # Given the same sequences in every global batch (one worker reads them in that order)...
    for step in one:
        assert one[step][0] == two[step][0]
    # ...the loss, normalised by the global number of target tokens, follows the same curve.
    diffs = [abs(one[s][1] - two[s][1]) for s in one]
    print(f"\n[parity] max |loss(1 worker) - loss(2 workers)| over {STEPS} steps: {max(diffs):.2e}")
    assert max(diffs) < LOSS_ATOL
    assert one[STEPS][1] < one[1][1], "the loss did not go down"
    # Rank 0 logged every step's metrics to MLflow under the names the UI and tests rely on.
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "tokens_seen", "eval_loss",
            "eval_loss/docs_a", "eval_loss/docs_b"} <= set(mlflow_metrics)
    assert "mfu" not in mlflow_metrics  # CPU: no known peak FLOP/s
    assert [(m.step, round(m.value, 6)) for m in sorted(mlflow_loss, key=lambda m: m.step)] == [
        (s, round(one[s][1], 6)) for s in one]
    m1, m2 = res1["final_metrics"], res2["final_metrics"]
    assert abs(m1["grad_norm"] - m2["grad_norm"]) < 1e-4
    assert abs(m1["eval_loss"] - m2["eval_loss"]) < 0.05  # 2 workers score other sequences, twice as many
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "tokens_seen"):
        assert key in m2
    assert m2["tokens_seen"] == STEPS * GLOBAL_BATCH * 32


def test_killed_worker_restarts_from_the_last_checkpoint_without_repeating_data(ray_local, work, ddp2):
    """Rank 1 kills its process after step 6; FailureConfig restarts the group from step 4."""
    result, records, trace = _run(work, "ddp2-killed", tiny_pretrain_config(2, micro_batch_size=MICRO),
                                  PAJAMA_TEST_FAIL_AT_STEP="6")
    assert (trace / "fault-injected").exists()
    pids = {r["pid"] for r in records if r["rank"] == 1}
    assert len(pids) == 2, "rank 1 should have run in two processes (before and after the restart)"
    # The attempt after the restart starts right after the step-4 checkpoint, 4 micro-batches into
    # each worker's share.
    first_pid = {rank: next(r["pid"] for r in records if r["rank"] == rank) for rank in (0, 1)}
    restarted = [r for r in records if r["pid"] != first_pid[r["rank"]]]
    assert [r["step"] for r in restarted if r["rank"] == 0] == list(range(5, STEPS + 1))
    for rank in (0, 1):
        first = next(r for r in restarted if r["rank"] == rank)
        assert first["seq_index"] == _share_rows(work, rank, 5)
    # Over the whole run, each sequence was trained on exactly once, at the same step as without
    # the failure, and the losses are those of the uninterrupted run.
    reference, resumed = _global_steps(ddp2[1], 2), _global_steps(records, 2)
    assert [resumed[s][0] for s in resumed] == [reference[s][0] for s in reference]
    consumed = [i for s in resumed for i in resumed[s][0]]
    assert sorted(consumed) == sorted(i for s in resumed for r in (0, 1) for i in _share_rows(work, r, s))
    diffs = [abs(resumed[s][1] - reference[s][1]) for s in reference]
    print(f"\n[fault] max |loss(resumed) - loss(uninterrupted)|: {max(diffs):.2e}")
    assert max(diffs) < LOSS_ATOL
    assert result["final_metrics"]["step"] == STEPS


def test_export_loads_and_generates_like_an_incite_model(ddp2, work):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = work
    model_dir = root / "ddp2" / "model"
    assert (model_dir / "model.safetensors").exists() and not list(model_dir.glob("*.bin"))
    # As the RedPajama-INCITE model cards show.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16)
    inputs = tokenizer("The json module", return_tensors="pt").to(model.device)
    torch.manual_seed(0)
    outputs = model.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=0.7, top_p=0.7, top_k=50,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    new_tokens = outputs.sequences[0, inputs.input_ids.shape[1]:]
    assert 0 < len(new_tokens) <= 12
    assert isinstance(tokenizer.decode(new_tokens), str)
    # In fp32 the exported weights give the logits the trained model gave right before export.
    probe = load_file(str(ddp2[2] / PROBE_FILE))
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        logits = fp32(input_ids=probe["input_ids"]).logits
    diff = (logits - probe["logits"]).abs().max().item()
    print(f"\n[export] max |logits(exported) - logits(trained)|: {diff:.2e}")
    assert diff < LOGITS_ATOL


def test_fsdp_trains_checkpoints_shards_resumes_after_relaunch_and_exports(ray_local, work, ddp2):
    """FSDP2 on gloo, as the 3B/7B presets run it (activation checkpointing, gradient accumulation:
    micro-batch 2 x 2 steps): a crash at step 6 with no retries left fails the run; relaunching
    the same run resumes from the sharded step-4 checkpoint and matches the DDP reference."""
    root, _ = work
    cfg = tiny_pretrain_config(2, micro_batch_size=2, strategy="fsdp", activation_checkpointing=True, max_failures=0)
    with pytest.raises(Exception, match="(?i)fail"):
        _run(work, "fsdp", cfg, PAJAMA_TEST_FAIL_AT_STEP="6")
    checkpoints = run_checkpoints(root, "fsdp")
    assert checkpoints, "the crashed run left no checkpoint"
    latest = checkpoints[-1]
    assert json.loads((latest / "train_state.json").read_text()) == {"step": 4, "consumed": 4 * GLOBAL_BATCH}
    shapes = checkpoint_shapes(latest)
    assert set(shapes) == {"state-0.safetensors", "state-1.safetensors"}
    # Sharded, not replicated: each rank holds its half of every 2-D weight and of its Adam moments.
    for name in ("model/gpt_neox.layers.0.attention.query_key_value.weight",
                 "optim/gpt_neox.layers.0.attention.query_key_value.weight/exp_avg"):
        assert shapes["state-0.safetensors"][name] == shapes["state-1.safetensors"][name] == [3 * 32 // 2, 32]

    result, records, trace = _run(work, "fsdp", cfg)  # the relaunch: same run name, no fault
    resumed_pid = records[-1]["pid"]
    assert min(r["step"] for r in records if r["pid"] == resumed_pid) == 5
    reference, fsdp = _global_steps(ddp2[1], 2), _global_steps(records, 2)
    # Micro-batches of 2, accumulated twice: each step's rows are those of the DDP reference's step.
    assert [sorted(fsdp[s][0]) for s in fsdp] == [sorted(reference[s][0]) for s in reference]
    diffs = [abs(fsdp[s][1] - reference[s][1]) for s in reference]
    print(f"\n[fsdp] max |loss(FSDP, relaunched) - loss(DDP)|: {max(diffs):.2e}")
    assert max(diffs) < LOSS_ATOL
    assert result["final_metrics"]["step"] == STEPS

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "fsdp" / "model", torch_dtype=torch.float32)
    probe = load_file(str(trace / PROBE_FILE))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    assert np.allclose(logits.numpy(), probe["logits"].numpy(), atol=LOGITS_ATOL)
