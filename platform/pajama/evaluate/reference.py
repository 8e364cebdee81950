"""RedPajama-INCITE's published lm-evaluation-harness scores: reference rows for the 3B and 7B recipes.

Source: the RedPajama paper (Weber et al., "RedPajama: an Open Dataset for Training Large Language
Models", arXiv:2411.12372v1), Table 7 (RedPajama-INCITE-Base-3B-v1, lm-evaluation-harness zero-shot)
and Table 9 (RedPajama-INCITE-7B Base and Instruct, lm-evaluation-harness), the tables of the
models' release. Only lm-eval scores of the tasks Pajama runs are here; HELM scores (such as the
7B Instruct's MMLU exact match) come from a different harness and prompts and are left out, as are
scores the tables do not give (MMLU, OpenBookQA and ARC for the 3B model, the chat models).
"""

from __future__ import annotations

# reference name -> {column label: {(task, metric): score}}
SCORES: dict[str, dict[str, dict[tuple[str, str], float]]] = {
    "incite-3b": {
        "RedPajama-INCITE-Base-3B-v1": {
            ("lambada_openai", "acc"): 0.6541,
            ("hellaswag", "acc_norm"): 0.6317,
            ("winogrande", "acc"): 0.6322,
            ("piqa", "acc"): 0.7470,
        },
    },
    "incite-7b": {
        "RedPajama-INCITE-7B-Base": {
            ("arc_challenge", "acc_norm"): 0.3925,
            ("arc_easy", "acc"): 0.6923,
            ("boolq", "acc"): 0.707,
            ("hellaswag", "acc_norm"): 0.7037,
            ("lambada_openai", "acc"): 0.7143,
            ("piqa", "acc_norm"): 0.7737,
            ("winogrande", "acc"): 0.6417,
        },
        "RedPajama-INCITE-7B-Instruct": {
            ("arc_challenge", "acc_norm"): 0.4078,
            ("arc_easy", "acc"): 0.7159,
            ("boolq", "acc"): 0.6865,
            ("hellaswag", "acc_norm"): 0.7103,
            ("lambada_openai", "acc"): 0.6895,
            ("piqa", "acc_norm"): 0.7699,
            ("winogrande", "acc"): 0.6567,
        },
    },
}
