"""MFU of Pajama's training step for a ~1B GPT-NeoX in bf16 on one GPU, without Ray.

For GPU machines that cannot install Ray (the lent benchmark machine cannot fetch packages and
Ray's wheel is larger than what can be carried there): it runs the same step as
`pajama.train.loop` — GPTNeoXForCausalLM from the recipe's shape, bf16 autocast over fp32 master
weights, AdamW, summed token loss normalised by target tokens, gradient clipping — on random
tokens, and prints tokens/s and MFU (6 x parameters x tokens/s / peak) for a few variants side by
side. The Ray loop's overhead over a bare loop is measured on CPU by pretrain_throughput.py.

    python benchmarks/gpu_step_mfu.py --preset 1b --steps 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
REPO = Path(__file__).resolve().parents[1]


def preset_shape(name: str) -> dict:
    """The model section of a recipe, following `inherit:` (no pydantic needed here)."""
    raw = yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())
    model = raw.get("pretrain", {}).get("model", {})
    if raw.get("inherit"):
        model = {**preset_shape(raw["inherit"]), **model}
    return model


def run(shape: dict, micro: int, seq: int, steps: int, compile_model: str, checkpointing: bool) -> dict:
    """compile_model: "off", "model" (torch.compile of the module, as the loop's `compile`), or
    "model+loss" (one compiled function from tokens to loss, so the bf16->fp32 cast and the
    cross-entropy over the 50k vocabulary fuse instead of materialising fp32 logits)."""
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=shape.get("vocab_size", 50432), hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
        intermediate_size=shape.get("intermediate_size") or 4 * shape["hidden_size"],
        rotary_pct=shape.get("rotary_pct", 1.0), use_parallel_residual=shape.get("use_parallel_residual", False),
        max_position_embeddings=seq, hidden_act="gelu", attn_implementation="sdpa")
    model = GPTNeoXForCausalLM(cfg).cuda()
    if checkpointing:
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = torch.compile(model) if compile_model == "model" else model
    data = torch.randint(0, cfg.vocab_size, (micro, seq), device="cuda")

    def forward_loss(tokens):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = step_model(input_ids=tokens, use_cache=False).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                                 tokens[:, 1:].reshape(-1), reduction="sum")

    loss_fn = torch.compile(forward_loss) if compile_model == "model+loss" else forward_loss

    def step():
        loss = loss_fn(data)
        (loss / data[:, 1:].numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3 if compile_model == "off" else 5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    tps = micro * seq * steps / elapsed
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK.items() if k in name), None)
    # 6N counts every parameter (as LLM Foundry, whose MPT ties its embeddings); "PaLM" MFU leaves
    # out the input embedding (a lookup, not a matmul) and adds attention's 12 * L * d * seq.
    palm_flops = 6 * (n_params - model.gpt_neox.embed_in.weight.numel()) + 12 * cfg.num_hidden_layers * \
        cfg.hidden_size * seq
    result = {"params": n_params, "micro": micro, "compile": compile_model, "ckpt": checkpointing,
              "tokens_per_s": tps, "mfu": 6 * n_params * tps / peak if peak else None,
              "mfu_palm": palm_flops * tps / peak if peak else None,
              "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    del model, opt, step_model, loss_fn
    torch.cuda.empty_cache()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="1b")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--micro", type=int, nargs="+", default=[8, 16])
    p.add_argument("--compile", nargs="+", choices=["off", "model", "model+loss"], default=["off", "model"])
    args = p.parse_args()
    shape = preset_shape(args.preset)
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__}; preset {args.preset}: {shape}", flush=True)
    for compile_model in args.compile:
        for micro in args.micro:
            try:
                r = run(shape, micro, args.seq, args.steps, compile_model, checkpointing=False)
            except torch.OutOfMemoryError:
                print(f"micro={micro} compile={compile_model}: out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            mfu = f"{r['mfu']:.1%} (PaLM {r['mfu_palm']:.1%})" if r["mfu"] else "n/a"
            print(f"params={r['params'] / 1e9:.2f}B micro={micro} seq={args.seq} compile={compile_model}: "
                  f"{r['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, peak {r['peak_mem_gib']:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
