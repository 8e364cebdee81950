"""Benchmarks of the trained models with lm-evaluation-harness, the way RedPajama-INCITE was judged.

`harness` runs lm-eval on one exported model; `stage` is the DAG's evaluate stage (every model,
cached per model, in MLflow); `reference` holds RedPajama-INCITE's published scores.
"""
