"""Ray job entrypoint for the instruct stage (supervised fine-tuning on instructions).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/instruct.py [--recipe tiny] [--set key=value]

Takes the same options as `pajama instruct --help`.
"""

from _entry import run

if __name__ == "__main__":
    run("instruct")
