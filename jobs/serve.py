"""Ray job entrypoint for the OpenAI-compatible Ray Serve app, kept up until the job is stopped.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/serve.py [--recipe tiny] [--set key=value]

Takes the same options as `pajama serve --help`.
"""

from _entry import run

if __name__ == "__main__":
    run("serve")
