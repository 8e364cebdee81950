"""The data milestone: RedPajama-style pretraining data on Ray Data."""
