"""Ray job entrypoint for the whole DAG: data -> pretrain -> instruct + chat -> serve probe.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/run_all.py [--recipe tiny] [--set key=value]

Takes the same options as `pajama run --help`.
"""

from _entry import run

if __name__ == "__main__":
    run("run")
