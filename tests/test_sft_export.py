"""LoRA and full fine-tuning both export a plain Hugging Face model that loads and generates.

A few SFT steps on Ray Train from a tiny GPT-NeoX base built here (no DAG, no download): the
export must load with AutoTokenizer/AutoModelForCausalLM alone, carry its chat template, and, for
LoRA, hold the merged weights (no adapter files, no peft needed) that differ from the base.
"""

from __future__ import annotations

import pytest
import torch
from pajama.config import SFTConfig
from pajama.serve.tiny_model import make_tiny_model
from pajama.artifacts import StageContext
from pajama.train.sft import run
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow

DATASETS = {"chat": {"format": "chat_jsonl", "path": "bundled:sft/chat.jsonl"},
            "instruct": {"format": "instruct_jsonl", "path": "bundled:sft/instruct.jsonl"}}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("sft-base"))


@pytest.mark.parametrize("method, style", [("lora", "chat"), ("full", "instruct")])
def test_finetune_exports_a_model_that_loads_and_generates(ray_session, base_dir, tmp_path, method, style):
    cfg = SFTConfig(style=style, datasets=[DATASETS[style]], method=method, lora={"r": 4, "alpha": 8},
                    max_length=128, shuffle_strategy="sort_shuffle_pull_based",
                    scaling={"num_workers": 1, "cpus_per_worker": 1},
                    micro_batch_size=4, global_batch_size=4, max_steps=3, warmup_steps=1,
                    learning_rate=5e-3, min_learning_rate=5e-4, checkpoint_every=3, eval_every=3, eval_batches=1)
    (tmp_path / "out").mkdir()
    ctx = StageContext(out=tmp_path / "out", storage=tmp_path / "storage", fingerprint=f"test-{method}")
    manifest = run(cfg.model_copy(update={"base_model": str(base_dir)}), ctx, {})
    assert manifest["method"] == method and "eval_loss" in manifest["final_metrics"]
    export = tmp_path / "out" / manifest["model_dir"]

    # A plain transformers model: merged weights, no adapter to apply.
    assert (export / "model.safetensors").is_file()
    assert not list(export.glob("adapter_*")), "the LoRA adapter must be merged into the export"
    model = AutoModelForCausalLM.from_pretrained(export)
    base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    weights = model.state_dict()
    assert weights.keys() == base.keys(), "export names differ from the base (unmerged LoRA?)"
    changed = [k for k in base if not torch.equal(weights[k], base[k])]
    assert changed, "the export equals the base model: no training happened"
    if method == "lora":
        # Only the adapted projections move; everything else is the frozen base.
        assert all(k.endswith(("query_key_value.weight", "attention.dense.weight")) for k in changed), changed

    tokenizer = AutoTokenizer.from_pretrained(export)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What does `json.dumps` do?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<bot>:" if style == "chat" else "\nA:")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True), str)
