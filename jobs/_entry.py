"""Shared by the job scripts: make `pajama` importable from a checkout and run one CLI command.

`ray job submit --working-dir . -- python jobs/<stage>.py` runs these from the uploaded working
directory; where Pajama is not installed in the cluster's Python, the checkout's `platform/`
source root is put on the path (and `pajama.cluster.init_ray` ships the package to the workers).
"""

import sys
from pathlib import Path


def run(command: str) -> None:
    try:
        import pajama  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    from pajama.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
