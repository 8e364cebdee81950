"""The base-model and fine-tuning milestones: GPT-NeoX training on Ray Train."""
