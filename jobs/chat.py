"""Ray job entrypoint for the chat stage (supervised fine-tuning on conversations).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/chat.py [--recipe tiny] [--set key=value]

Takes the same options as `pajama chat --help`.
"""

from _entry import run

if __name__ == "__main__":
    run("chat")
