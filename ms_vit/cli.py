"""What the entry scripts share: their argument parser and option types (a mistake is one ``error:`` line naming
the option), device and weights options, and turning known errors into one clear line."""
import argparse
import logging
import math
import os
import signal
import sys

from .data import DatasetError
from .training.guard import Interrupted, RunStopped
from .weights.checkpoint import CheckpointError

USER_ERRORS = (CheckpointError, DatasetError, ValueError, FileNotFoundError)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ms_vit's convention for mistakes: one ``error: ...`` line on stderr (argparse's
    message, which names the option) and exit status 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (--help lists the options)\n")


def ranged(kind: type, low=None, high=None, *, open_low: bool = False, open_high: bool = False):
    """An argparse ``type``: a finite ``kind`` (int or float) in ``[low, high]`` (``open_low``/``open_high``: that
    end excluded). ``ms_vit.config`` applies it to a recipe file's values too."""
    bounds = [f"{'above' if open_low else 'at least'} {low:g}" if low is not None else "",
              f"{'below' if open_high else 'at most'} {high:g}" if high is not None else ""]
    description = " ".join([{int: "an integer", float: "a number"}[kind], " and ".join(b for b in bounds if b)])

    def convert(text):
        try:
            value = None if isinstance(text, bool) else kind(str(text).strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or (low is not None and (value < low or open_low and
                                                                               value == low)) \
                or (high is not None and (value > high or open_high and value == high)):
            raise argparse.ArgumentTypeError(f"must be {description.strip()}, not {text!r}")
        return value
    convert.__name__ = description.strip()
    return convert


COUNT = ranged(int, 1)                              # sizes, steps, epochs, workers
FRACTION = ranged(float, 0.0, 1.0)                  # probabilities
POSITIVE = ranged(float, 0.0, open_low=True)        # rates, intervals
NON_NEGATIVE = ranged(float, 0.0)


def new_file(text: str) -> str:
    """An argparse ``type`` for an output file: not an existing folder."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file name")
    return text


def folder(text: str) -> str:
    """An argparse ``type`` for an output folder: not an existing file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def check_output(path: str, option: str) -> None:
    """Before any work: the folder of the output file ``path`` (given by ``option``) exists, or is created, and can be
    written; else ``ValueError`` naming the option."""
    check_folder(os.path.dirname(os.path.abspath(path)), f"{option} {path}")


def check_folder(folder: str, what: str) -> None:
    """``folder`` exists, or is created, and can be written; else ``ValueError`` naming ``what`` goes there."""
    from .files import probe_writable
    try:
        os.makedirs(folder, exist_ok=True)
        probe_writable(folder)
    except OSError as exc:
        raise ValueError(f"cannot write {what}: {exc.strerror} ({folder})") from None


def add_weights_args(parser: argparse.ArgumentParser, also: str = "") -> None:
    """``--ckpt_path FILE`` or ``--pretrained NAME``, one of them required, and ``--model``; ``also``: what else
    ``--ckpt_path`` takes."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="a checkpoint: written by train.py or ms_vit.weights.convert, or in any "
                        "layout "
                        "ms_vit.weights.convert knows" + also)
    source.add_argument("--pretrained", metavar="NAME", help="a pretrained weight set by name (python -m "
                        "ms_vit.weights lists them), downloaded and verified on first use")
    parser.add_argument("--model", help="variant, for checkpoints that record none and whose shapes do not say it")


def load_model(args, **options):
    """The model ``--ckpt_path`` or ``--pretrained`` names (``add_weights_args``)."""
    from .factory import create_model
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
        status = main(argv) or 0
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except RunStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 1
    except Interrupted as exc:
        print(f"interrupted by {signal.Signals(exc.args[0]).name} before training started: the files written so far "
              "are complete; continue with the same command and --resume auto", file=sys.stderr)
        status = 128 + exc.args[0]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    except BrokenPipeError:                # the reader of the output went away (``| head``): end quietly, as
        quiet_stdout()                     # a Unix tool killed by SIGPIPE
        status = 128 + signal.SIGPIPE
    except OSError as exc:                 # the file system refused (permissions, a full disk...)
        print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        status = 2
    return status


def quiet_stdout() -> None:
    """Send what is left of standard output to /dev/null (after a broken pipe: no second error at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
