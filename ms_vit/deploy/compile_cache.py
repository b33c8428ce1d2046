"""MindSpore's graph compile cache across processes, keyed so that a cached graph is only ever reused for the same
graph.

A fresh ``eval.py`` or ``infer.py`` (graph mode) spends seconds compiling the forward graph (B/16 batch 8: 2.4 s
of a 4.1 s first pass); with MindSpore's compile cache (``enable_compile_cache``) the next process loads it
instead (1.9 s). MindSpore's own check is not enough to reuse it safely: it does not look at the input shape
(measured: a graph cached for batch 8 answered a batch of 4 with 8 rows). So each graph gets its own folder,
``$MS_VIT_CACHE/graphs/<key>`` (default ``~/.cache/ms_vit``), the key a hash of everything the graph depends on:
ms_vit's source files (model, layers, fused kernels), MindSpore's version, the model's config, the fused-kernel
switch, the device, and the input shape. A change to any of them compiles afresh into a new folder.

A compiled graph is code MindSpore runs: the folders and every file in them must be the user's own
(``files.check_private_tree``: owned by the user, writable by no one else, no symbolic links), or the cache is not
used (one warning; the graph is compiled in memory as without a cache).
"""
import glob
import hashlib
import json
import logging
import os

import mindspore as ms

from ..files import CacheError, check_private_tree, private_cache

logger = logging.getLogger("ms_vit")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))    # ms_vit/, every subpackage


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(_PACKAGE, "**", "*.*"), recursive=True)):
        if path.endswith((".py", ".cc", ".h")):
            with open(path, "rb") as f:
                digest.update(path[len(_PACKAGE):].encode() + f.read())
    return digest.hexdigest()


def graph_key(net, input_shape) -> str:
    """The cache key of ``net``'s forward graph for inputs of ``input_shape``."""
    described = {"sources": _sources_digest(), "mindspore": ms.__version__, "config": net.config.to_dict(),
                 "fused_kernels": bool(getattr(net, "fused_kernels", False)), "shape": list(input_shape),
                 "device": ms.get_context("device_target")}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def enable(net, batch_size: int) -> str:
    """Turn MindSpore's compile cache on for ``net``'s forward graph on batches of ``batch_size`` images (graph
    mode); returns the folder, or "" when the cache folder cannot be written (then every process compiles)."""
    c = net.config
    key = graph_key(net, (batch_size, c.in_channels, c.image_size, c.image_size))
    try:
        folder = private_cache("graphs", key)
        check_private_tree(folder)
    except CacheError as exc:
        logger.warning(f"no graph compile cache: {exc}")
        return ""
    except OSError as exc:
        logger.warning(f"no graph compile cache ({exc.filename}: {exc.strerror}); set MS_VIT_CACHE to a writable "
                       "folder")
        return ""
    ms.set_context(enable_compile_cache=True, compile_cache_path=folder)
    return folder
