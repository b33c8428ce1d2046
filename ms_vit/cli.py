"""What the entry scripts share: device options and turning known errors into one clear line."""
import argparse
import logging
import sys

from .checkpoint import CheckpointError
from .data import DatasetError
from .guard import RunStopped

USER_ERRORS = (CheckpointError, DatasetError, ValueError, FileNotFoundError)


def add_weights_args(parser: argparse.ArgumentParser, also: str = "") -> None:
    """``--ckpt_path FILE`` or ``--pretrained NAME``, one of them required, and ``--model``; ``also``: what else
    ``--ckpt_path`` takes."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="a checkpoint: written by train.py or ms_vit.convert, or in any layout "
                        "ms_vit.convert knows" + also)
    source.add_argument("--pretrained", metavar="NAME", help="a pretrained weight set by name (python -m "
                        "ms_vit.weights lists them), downloaded and verified on first use")
    parser.add_argument("--model", help="variant, for checkpoints that record none and whose shapes do not say it")


def load_model(args, **options):
    """The model ``--ckpt_path`` or ``--pretrained`` names (``add_weights_args``)."""
    from . import create_model
    if args.pretrained:
        return create_model(args.pretrained, pretrained=True, **options)
    return create_model(args.model, checkpoint_path=args.ckpt_path, **options)


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
