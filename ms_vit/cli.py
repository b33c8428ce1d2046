"""What the entry scripts share: device options and turning known errors into one clear line."""
import argparse
import logging
import sys

from .checkpoint import CheckpointError
from .data import DatasetError
from .guard import RunStopped

USER_ERRORS = (CheckpointError, DatasetError, ValueError, FileNotFoundError)


def add_device_args(parser: argparse.ArgumentParser, auto_mode: bool = False) -> None:
    """``--device_target`` and ``--mode``; with ``auto_mode``, ``--mode auto`` (the default) lets the script pick."""
    parser.add_argument("--device_target", choices=["Ascend", "GPU", "CPU"],
                        help="device to run on (default: Ascend, else GPU, else CPU, whichever is available)")
    if auto_mode:
        parser.add_argument("--mode", choices=["auto", "graph", "pynative"], default="auto",
                            help="MindSpore execution mode: graph compiles once (seconds) and runs fastest; "
                                 "pynative starts at once; auto: pynative when the images fit in one batch, graph "
                                 "otherwise (default: %(default)s)")
    else:
        parser.add_argument("--mode", choices=["graph", "pynative"], default="graph",
                            help="MindSpore execution mode; graph compiles once and runs fastest "
                                 "(default: %(default)s)")


def run(main, argv=None) -> int:
    """Call ``main(argv)``; known user errors become ``error: ...`` on stderr and exit status 2, a run stopped by a
    fault exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return main(argv) or 0
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
