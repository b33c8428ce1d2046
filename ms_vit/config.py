"""Recipe files: ``train.py --config FILE`` reads a YAML mapping of train.py's options (``configs/*.yaml``).

The command line wins over the file, the file over train.py's defaults. A key that is not an option of train.py
is an error that lists the valid ones. The resolved options are written as ``config.yaml`` beside the checkpoints
(and recorded inside them) so that a run can be repeated with ``--config that/config.yaml``.
"""
import argparse
from typing import List, Optional

import yaml

from .files import write_atomically


class ConfigError(ValueError):
    """A recipe file that cannot be used; the message says why."""


def option_names(parser: argparse.ArgumentParser) -> List[str]:
    return sorted(a.dest for a in parser._actions if a.dest not in ("help", "config"))


def read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """The options in ``path``, checked against ``parser``'s."""
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must be a mapping of train.py options (key: value)")
    valid = option_names(parser)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"config {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    actions = {a.dest: a for a in parser._actions}
    for key, value in list(values.items()):
        action = actions[key]
        if value is None:
            continue
        if action.choices and value not in action.choices:
            raise ConfigError(f"config {path}: {key} must be one of {', '.join(map(str, action.choices))}, "
                              f"not {value!r}")
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and \
                not isinstance(value, bool):
            raise ConfigError(f"config {path}: {key} must be true or false, not {value!r}")
        if callable(action.type):                   # the command line's own check (a number's range...)
            try:
                values[key] = action.type(value)
            except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
                raise ConfigError(f"config {path}: {key} {exc}") from None
    return values


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with defaults taken from ``--config FILE`` when given."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    known, _ = first.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(known.config, parser))
    return parser.parse_args(argv)


def write_config(args: argparse.Namespace, path: str) -> None:
    """The resolved options as YAML (atomically)."""
    values = {k: v for k, v in sorted(vars(args).items()) if k != "config"}

    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(values, f, sort_keys=True)
    write_atomically(path, write)
