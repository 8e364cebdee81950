"""Fast checks of the pretraining loop's pieces that need no Ray cluster: the deterministic data
stream and its resume arithmetic, the learning-rate schedule, and the GPU presets' model sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pajama.config import load_config
from pajama.train.loop import _global_batches, _rank_slice, lr_at
from pajama.train.pretrain import gpt_neox_config


class _Rows:
    """Stands in for a Ray Data shard: `iter_batches` over rows 0..n-1, in order, every epoch."""

    def __init__(self, n: int):
        self.index = np.arange(n)

    def iter_batches(self, batch_size: int, batch_format: str, drop_last: bool):
        assert batch_format == "numpy" and drop_last
        for start in range(0, len(self.index) - batch_size + 1, batch_size):
            yield {"seq_index": self.index[start : start + batch_size]}


def _take(stream, k: int) -> list[list[int]]:
    return [next(stream)["seq_index"].tolist() for _ in range(k)]


def test_stream_is_ordered_and_wraps_to_the_next_epoch_without_the_ragged_tail():
    batches = _take(_global_batches(_Rows(10), batch_rows=4, skip_rows=0), 5)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]


@pytest.mark.parametrize("consumed_batches", [0, 1, 2, 3, 7])
def test_resuming_after_k_batches_continues_exactly_where_the_run_stopped(consumed_batches):
    uninterrupted = _take(_global_batches(_Rows(10), 4, 0), 12)
    resumed = _take(_global_batches(_Rows(10), 4, skip_rows=4 * consumed_batches), 12 - consumed_batches)
    assert resumed == uninterrupted[consumed_batches:]


def test_rank_slices_partition_the_global_batch():
    batch = {"seq_index": torch.arange(8)}
    parts = [_rank_slice(batch, rank, micro=4)["seq_index"].tolist() for rank in range(2)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_too_small_a_training_set_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than 8 sequences"):
        next(_global_batches(_Rows(5), 8, 0))


def test_learning_rate_warms_up_linearly_then_decays_to_the_floor():
    cfg = {"learning_rate": 1e-3, "min_learning_rate": 1e-4, "warmup_steps": 10, "max_steps": 110}
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
