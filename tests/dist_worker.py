"""One process of a compress run for test_distributed (started directly or by torchrun).

argv[1]: JSON with the CompressConfig fields, plus "stop_at" ([phase, step]: Ctrl-C there on every
rank) and "log" (a folder where each rank notes what it wrote).
"""
import json
import os
import sys
from pathlib import Path

from cait_cli.errors import Interrupted
from cait_cli.pipeline import compress as compress_module
from cait_cli.pipeline.progress import Silent
from cait_cli.pipeline.state import RunDir

from support import StopAt  # tests/ is this script's sys.path[0]


def logged(fn, what, log: Path):
    def wrapper(*args, **kwargs):
        with open(log / f"rank{os.environ.get('RANK', '0')}.txt", "a") as f:
            f.write(what + "\n")
        return fn(*args, **kwargs)
    return wrapper


def main() -> None:
    opts = json.loads(sys.argv[1])
    stop_at, log = opts.pop("stop_at", None), Path(opts.pop("log"))
    compress_module.save_checkpoint = logged(compress_module.save_checkpoint, "checkpoint", log)
    RunDir.create = logged(RunDir.create, "run-dir", log)  # called only by a RunDir that writes
    cfg = compress_module.CompressConfig(**{**opts, "out": Path(opts["out"]),
                                            "latency_cache": Path(opts["latency_cache"])})
    try:
        result = compress_module.compress(cfg, StopAt(*stop_at) if stop_at else Silent())
    except Interrupted:
        sys.exit(130)
    (log / f"result{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result.plan.to_dict()))


if __name__ == "__main__":
    main()
