"""Ray job entrypoint for the data stage (read, clean, signals, filters, dedup, tokenizer, shards).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/prepare_data.py [--recipe tiny] [--set key=value]

Takes the same options as `pajama data --help`.
"""

from _entry import run

if __name__ == "__main__":
    run("data")
