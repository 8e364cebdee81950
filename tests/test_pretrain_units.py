"""Fast checks of the pretraining loop's pieces that need no Ray cluster (the data stream has its
own, tests/test_train_shards.py): the learning-rate schedule, checkpoints (written and read back in
one process, world size 1) and what they refuse to load, the progress lines, and the GPU presets'
model sizes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import free_port
from pajama.config import TrainingConfig, load_config
from pajama.train import progress as progress_module
from pajama.train.loop import (
    CheckpointError,
    TrainSpec,
    _build_model,
    _optimizer,
    _parallelize,
    lr_at,
    read_checkpoint,
    row_losses,
    write_checkpoint,
)
from pajama.train.pretrain import gpt_neox_config
from pajama.train.progress import Progress


def test_learning_rate_warms_up_linearly_then_decays_to_the_floor():
    cfg = TrainingConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5.5e-4)
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


class _Vocab:
    bos_token_id = eos_token_id = 0
    pad_token_id = 1

    def __len__(self) -> int:
        return 50277  # GPT-NeoX-20B's tokenizer


@pytest.mark.parametrize("recipe,layers,hidden,heads,billions", [
    ("160m", 12, 768, 12, 0.162), ("1b", 16, 2048, 16, 1.011), ("3b", 32, 2560, 32, 2.776),
])
def test_gpu_presets_have_pythia_and_incite_sizes(recipe, layers, hidden, heads, billions):
    cfg = load_config(recipe)
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model_config = gpt_neox_config(cfg.pretrain.model, _Vocab())
    assert (model_config["num_hidden_layers"], model_config["hidden_size"], model_config["num_attention_heads"]) == (
        layers, hidden, heads)
    assert model_config["vocab_size"] == 50432
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**model_config))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)
    assert cfg.pretrain.precision == "bf16" and cfg.pretrain.scaling.use_gpu
    assert cfg.pretrain.global_batch_size * cfg.data.seq_len >= 2 * 2**20  # >= 2M tokens per step


TINY = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 32}
TRAINING = TrainingConfig(learning_rate=1e-2, min_learning_rate=1e-3, warmup_steps=1, max_steps=10)


def _model_and_optimizer(seed: int, model_config: dict = TINY):
    torch.manual_seed(seed)
    spec = TrainSpec(init="scratch", model_config=model_config, seed=seed, seq_len=16, eval_slices=("all",))
    model = _build_model(spec, TRAINING, torch.device("cpu"))
    return model, _optimizer(model, TRAINING)


def _step(model, optimizer) -> float:
    batch = {"input_ids": torch.randint(0, TINY["vocab_size"], (4, 16))}  # draws from the RNG a checkpoint keeps
    losses, n = row_losses(model, batch, torch.autocast("cpu", enabled=False))
    loss = losses.sum() / n.sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, float]:
    """A checkpoint after two steps, and the loss of the step the uninterrupted run takes next."""
    model, optimizer = _model_and_optimizer(0)
    _step(model, optimizer), _step(model, optimizer)
    write_checkpoint(model, optimizer, {"step": 2, "consumed": 8}, rank=0, world=1, directory=tmp_path)
    return tmp_path, _step(model, optimizer)


def test_a_checkpoint_restores_weights_optimiser_and_rng_so_the_next_step_is_the_same(checkpoint):
    directory, next_loss = checkpoint
    assert sorted(p.name for p in directory.iterdir()) == ["state-0.safetensors", "train_state.json"]
    model, optimizer = _model_and_optimizer(1)  # other initial weights, a fresh optimiser
    assert read_checkpoint(model, optimizer, rank=0, world=1, directory=directory) == {"step": 2, "consumed": 8}
    assert _step(model, optimizer) == next_loss


@pytest.fixture
def process_group_of_one():
    """What Ray Train gives a single worker: a process group of world size 1 (gloo on CPU)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_wraps_a_single_worker_and_its_checkpoint_restores_the_next_step(process_group_of_one, tmp_path):
    """strategy fsdp shards one worker too (FSDP2 DTensors), so the numerics of a 1-GPU run are
    those of the cluster run; the checkpoint round trip works on the sharded tensors."""
    model, _ = _model_and_optimizer(0)
    model = _parallelize(model, "fsdp", "fp32", world=1)
    optimizer = _optimizer(model, TRAINING)
    assert all(type(p).__name__ == "DTensor" for p in model.parameters())
    _step(model, optimizer), _step(model, optimizer)
    write_checkpoint(model, optimizer, {"step": 2, "consumed": 8}, rank=0, world=1, directory=tmp_path)
    next_loss = _step(model, optimizer)

    restored, _ = _model_and_optimizer(1)
    restored = _parallelize(restored, "fsdp", "fp32", world=1)
    restored_optimizer = _optimizer(restored, TRAINING)
    assert read_checkpoint(restored, restored_optimizer, rank=0, world=1, directory=tmp_path)["step"] == 2
    assert _step(restored, restored_optimizer) == next_loss


def test_ddp_leaves_a_single_worker_unwrapped(process_group_of_one):
    model, _ = _model_and_optimizer(0)
    assert _parallelize(model, "ddp", "fp32", world=1) is model


class _WritesMarker:
    """A pickle that, when unpickled, creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("planted", ["state-0.safetensors", ".metadata"])
def test_resume_never_unpickles_what_is_planted_in_a_checkpoint(checkpoint, tmp_path_factory, planted):
    """A pickle in place of the state file is refused, naming the file; one planted as DCP's
    `.metadata` is never opened. Either way the pickle's code does not run."""
    directory, _ = checkpoint
    elsewhere = tmp_path_factory.mktemp("proof") / "ran"
    pickle.loads(pickle.dumps(_WritesMarker(elsewhere)))
    assert elsewhere.exists(), "the planted pickle would run code if it were unpickled"
    marker = tmp_path_factory.mktemp("marker") / "ran"
    (directory / planted).write_bytes(pickle.dumps(_WritesMarker(marker)))
    model, optimizer = _model_and_optimizer(1)
    if planted == "state-0.safetensors":
        with pytest.raises(CheckpointError, match=r"state-0\.safetensors is not a safetensors file"):
            read_checkpoint(model, optimizer, rank=0, world=1, directory=directory)
    else:
        assert read_checkpoint(model, optimizer, rank=0, world=1, directory=directory)["step"] == 2
    assert not marker.exists()


def test_a_checkpoint_of_another_shape_or_world_size_is_refused(checkpoint):
    directory, _ = checkpoint
    model, optimizer = _model_and_optimizer(1, {**TINY, "hidden_size": 32})
    with pytest.raises(CheckpointError, match=r"state-0\.safetensors: model/gpt_neox\.embed_in\.weight is"):
        read_checkpoint(model, optimizer, rank=0, world=1, directory=directory)
    model, optimizer = _model_and_optimizer(1)
    with pytest.raises(CheckpointError, match="written by a run of 1 workers, this one has 2"):
        read_checkpoint(model, optimizer, rank=0, world=2, directory=directory)
    with pytest.raises(CheckpointError, match="has no state-1.safetensors"):
        read_checkpoint(model, optimizer, rank=1, world=2, directory=directory)


def test_progress_lines_come_every_log_every_steps_or_ten_seconds_whichever_is_rarer(capsys):
    now = [0.0]
    shown = Progress(start=4, total=20, log_every=2, clock=lambda: now[0])
    for step in range(5, 21):
        now[0] += 3.0  # 3 s a step
        metrics = {"loss": 2.5, "tokens_per_s": 1000.0}
        if step == 10:
            metrics.update(eval_loss=2.75, **{"eval_loss/docs": 2.75})
        shown.update(step, metrics)
    lines = capsys.readouterr().out.splitlines()
    # Even steps at least 10 s apart, plus the evaluation at step 10 and the last step.
    assert [int(line.split()[2].split("/")[0]) for line in lines] == [6, 10, 14, 18, 20]
    assert all(line.startswith("[pajama] step ") for line in lines)
    # Step 6: 2 steps in 6 s since the resume at step 4, 14 steps to go at 3 s each.
    assert lines[0] == "[pajama] step 6/20: loss=2.5, tokens_per_s=1000, eta=00:42"
    assert "eval_loss=2.75" in lines[1] and "docs" not in lines[1]
    assert lines[-1].endswith("eta=00:00")
    assert progress_module.LINE_INTERVAL_S == 10.0
