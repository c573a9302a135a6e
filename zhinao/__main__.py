"""Entry point of every training replica: `torchrun ... -m zhinao`.

The stage comes from ZHINAO_STAGE_SPEC (set by the PyTorchJob renderer), so the container command
is the same for every stage and the job is reproducible from its manifest alone.
"""

import logging
import os
import sys

from zhinao.config.runtime import StageRuntime
from zhinao.stages import run_stage


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("ZHINAO_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s",
    )
    rt = StageRuntime.from_env()
    run_stage(rt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
