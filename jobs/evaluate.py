"""Ray job entrypoint for the evaluate stage (lm-evaluation-harness on base, instruct and chat).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/evaluate.py [--recipe 3b] [--set key=value]

Takes the same options as `pajama evaluate --help` (`--model SOURCE` evaluates one model instead).
"""

from _entry import run

if __name__ == "__main__":
    run("evaluate")
