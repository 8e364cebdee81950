"""Ray job entrypoint for the pretrain stage (GPT-NeoX base model on Ray Train).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/pretrain.py [--recipe tiny] [--set key=value]

Takes the same options as `pajama pretrain --help`.
"""

from _entry import run

if __name__ == "__main__":
    run("pretrain")
