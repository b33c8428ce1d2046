"""What a MINDIR file would run, read without running it.

A MINDIR is a protobuf (``mindspore.train.mind_ir_pb2.ModelProto``): graphs of nodes, each naming a primitive. Most
primitives are MindSpore's own operators, but some load code named in the file: a ``Custom`` op ``dlopen``s the
shared library (``func_type="aot"``) or runs the function (pyfunc, julia, ...) its attributes name, and
``PyFunc``/``PyExecute``/``PyInterpret`` run Python. ``mindspore.load`` + ``nn.GraphCell`` would run them, so a
MINDIR from elsewhere holding any is refused before ``mindspore.load`` sees it. export.py's files never hold one
(exports are built on MindSpore's operators alone).
"""
import re
from typing import Dict

CODE_OPS = ("Custom", "PyFunc", "PyExecute", "PyInterpret")     # primitives that load or run code named in the file
_REFERENCE = re.compile(r"^REF::(?P<op>[^:]+):\d+$")            # a node's op_type: REF::<primitive>:<id>


class UntrustedModelError(ValueError):
    """A MINDIR that would load or run code of its own; the message names the operators."""


def operator_counts(path: str) -> Dict[str, int]:
    """``{operator: nodes}`` over the file's graphs (the main graph and its functions), by the primitive each node
    refers to; raises ``ValueError`` for a file that is not a MINDIR."""
    from google.protobuf.message import DecodeError
    from mindspore.train.mind_ir_pb2 import ModelProto
    model = ModelProto()
    with open(path, "rb") as f:
        try:
            model.ParseFromString(f.read())
        except DecodeError:
            raise ValueError(f"{path} is not a MINDIR file (it does not parse as mind_ir)") from None
    primitives = {p.name: p.op_type for p in model.primitives}
    counts: Dict[str, int] = {}
    for graph in [model.graph, *model.functions]:
        for node in graph.node:
            reference = _REFERENCE.match(node.op_type)
            op = primitives.get(reference.group("op"), reference.group("op").split(":")[0]) if reference \
                else node.op_type
            counts[op] = counts.get(op, 0) + 1
    for op in primitives.values():                    # a primitive declared but reached another way still counts
        counts.setdefault(op, 0)
    return counts


def check_no_code(path: str) -> None:
    """Raise ``UntrustedModelError`` if the MINDIR at ``path`` holds an operator that loads or runs code."""
    found = {op: n for op, n in operator_counts(path).items() if op in CODE_OPS}
    if found:
        listed = ", ".join(f"{op} ({n} nodes)" for op, n in sorted(found.items()))
        raise UntrustedModelError(f"{path} holds operators that load or run code named in the file ({listed}): "
                                  "refused (export.py's MINDIR files hold none; see docs/security.md)")
