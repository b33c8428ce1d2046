"""The ViT as an ONNX graph that onnxruntime runs as fast as timm's export: built from the model's config and weights
with the ``onnx`` package, opset 17.

Why not ``mindspore.onnx.export``: MindSpore 2.10 writes opset 11 (no ``LayerNormalization``), has no ``Erf`` (the
exact GELU became a rational erfc approximation of ~30 elementwise nodes), decomposes LayerNorm into a pattern
onnxruntime does not fuse, flattens every Dense into ``Reshape``-``Gemm``-``Reshape`` and writes the traced batch
size into every ``Reshape``. onnxruntime ran that file at 0.64x the speed of timm's export of the same network
(B/16, batch 8). This graph has what ``torch.onnx.export`` gives timm at opset 17: one ``LayerNormalization`` per
norm, the exact GELU as ``x * 0.5 * (1 + Erf(x / sqrt 2))`` (fused by onnxruntime into one ``Gelu`` kernel, with the
bias), ``MatMul`` + ``Add`` for every Dense, and a symbolic batch dimension: one file serves any batch size.

The graph computes what ``ms_vit.models.vit.ViT`` computes in evaluation (checked: ``tests/test_export.py``, logits
within
1e-4 at batch 1, 3 and 8), with the variant's numerics (tanh or exact GELU, LayerNorm eps) and DeiT's options
(distillation token and head, LayerScale, position embedding without the class slot), mean or token pooling. One
thing it leaves out: with token pooling, the head reads the class (and distillation) token only, so in the last
block only those tokens attend and go through the MLP.
Shapes in comments: B batch (symbolic), T tokens, D dim, H heads, d head dim.
"""
import os
from typing import Dict, List, Optional, Union

import numpy as np

OPSET = 17
_EXTERNAL_DATA_BYTES = 1_800_000_000          # protobuf's 2 GB limit: larger weights go beside the file


class _Graph:
    """Nodes and initializers under construction, with unique names."""

    def __init__(self):
        from onnx import helper
        self.helper, self.nodes, self.initializers, self.count = helper, [], [], 0

    def weight(self, name: str, value) -> str:
        from onnx import numpy_helper
        value = np.asarray(value)
        value = np.array(value, dtype=np.float32 if value.dtype.kind == "f" else value.dtype, order="C")  # 0-d kept
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        self.count += 1
        return self.weight(f"const_{self.count}", np.asarray(value, dtype))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attributes) -> Union[str, List[str]]:
        self.count += 1
        names = [f"{op_type.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names


def _linear(g: _Graph, x: str, params: Dict[str, np.ndarray], prefix: str) -> str:
    """A Dense layer: x @ weight^T + bias (the weight stored transposed, as torch's exporter stores it)."""
    weight = g.weight(prefix + ".weight", params[prefix + ".weight"].T)
    return g.op("Add", g.op("MatMul", x, weight), g.weight(prefix + ".bias", params[prefix + ".bias"]))


def _layer_norm(g: _Graph, x: str, params, prefix: str, eps: float) -> str:
    return g.op("LayerNormalization", x, g.weight(prefix + ".gamma", params[prefix + ".gamma"]),
                g.weight(prefix + ".beta", params[prefix + ".beta"]), axis=-1, epsilon=float(eps))


def _gelu(g: _Graph, x: str, approximate: bool) -> str:
    if approximate:        # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
        cube = g.op("Mul", g.op("Mul", x, x), x)
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.const(0.044715))), g.const(0.7978845608028654))
        return g.op("Mul", g.op("Mul", x, g.const(0.5)), g.op("Add", g.op("Tanh", inner), g.const(1.0)))
    erf = g.op("Erf", g.op("Div", x, g.const(1.4142135623730951)))          # torch's exact GELU pattern
    return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.const(1.0))), g.const(0.5))


def _leading(g: _Graph, x: str, tokens: int) -> str:
    """x[:, :tokens]: (B, T, D) -> (B, tokens, D)."""
    return g.op("Slice", x, g.const([0], np.int64), g.const([tokens], np.int64), g.const([1], np.int64))


def _attention(g: _Graph, x: str, params, prefix: str, heads: int, dim: int, queries: Optional[int] = None) -> str:
    """Multi-head self-attention of x (B, T, D); with ``queries``, only the first ``queries`` tokens attend (the
    last block of a class-token model: the head reads nothing else). The d ** -0.5 scale is folded into the query's
    rows of the qkv weights, so no node scales at run time; k goes straight to (B, H, d, T)."""
    d = dim // heads
    weight, bias = params[prefix + ".qkv.weight"].copy(), params[prefix + ".qkv.bias"].copy()
    weight[:dim] *= d ** -0.5
    bias[:dim] *= d ** -0.5

    def project(inputs: str, rows: slice, name: str) -> str:
        return g.op("Add", g.op("MatMul", inputs, g.weight(f"{prefix}.{name}.weight", weight[rows].T)),
                    g.weight(f"{prefix}.{name}.bias", bias[rows]))

    if queries is None:
        q, k, v = g.op("Split", project(x, slice(None), "qkv"), g.const([dim, dim, dim], np.int64), outputs=3,
                       axis=-1)                                                              # 3 x (B, T, D)
    else:
        q = project(_leading(g, x, queries), slice(0, dim), "q")                           # (B, queries, D)
        k, v = g.op("Split", project(x, slice(dim, None), "kv"), g.const([dim, dim], np.int64), outputs=2, axis=-1)
    q, k, v = (g.op("Reshape", t, g.const([0, 0, heads, d], np.int64)) for t in (q, k, v))   # (B, *, H, d)
    scores = g.op("MatMul", g.op("Transpose", q, perm=[0, 2, 1, 3]), g.op("Transpose", k, perm=[0, 2, 3, 1]))
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), g.op("Transpose", v, perm=[0, 2, 1, 3]))  # (B, H, *, d)
    out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.const([0, 0, dim], np.int64))
    return _linear(g, out, params, prefix + ".out")                                    # (B, *, D)


def _branch_scale(g: _Graph, x: str, params, name: str) -> str:
    """DeiT III's LayerScale (``<branch>.cell.2.gamma``), if the model has it."""
    return g.op("Mul", x, g.weight(name, params[name])) if name in params else x


def build(net, batch: Optional[int] = None):
    """The ``onnx.ModelProto`` of ``net`` (a ``ViT``) in evaluation: input ``images`` (B, C, S, S) float32, output
    ``logits`` (B, K); B symbolic, or ``batch``."""
    from onnx import TensorProto, helper
    c = net.config
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    g = _Graph()
    dim, batch = c.embed_dim, batch or "batch"
    x = g.op("Conv", "images", g.weight("patch_embedding.conv.weight", params["patch_embedding.conv.weight"]),
             g.weight("patch_embedding.conv.bias", params["patch_embedding.conv.bias"]),
             kernel_shape=[c.patch_size, c.patch_size], strides=[c.patch_size, c.patch_size])   # (B, D, g, g)
    x = g.op("Transpose", g.op("Reshape", x, g.const([0, dim, -1], np.int64)), perm=[0, 2, 1])   # (B, N, D)
    expand_to = g.op("Concat", g.op("Shape", "images", start=0, end=1), g.const([1, dim], np.int64), axis=0)
    prefix = [g.op("Expand", g.weight("cls", params["cls"]), expand_to)]                        # (B, 1, D)
    if c.distilled:
        prefix.append(g.op("Expand", g.weight("dist_token", params["dist_token"]), expand_to))
    pos = g.weight("pos_embedding", params["pos_embedding"])
    if c.no_embed_class:
        x = g.op("Concat", *prefix, g.op("Add", x, pos), axis=1)
    else:
        x = g.op("Add", g.op("Concat", *prefix, x, axis=1), pos)                              # (B, T, D)
    # A class-token model's head reads the prefix tokens only: in the last block only they attend and go through
    # the MLP (the same logits; a 1 / (T - 1) share of the block's work)
    head_tokens = None if c.global_pool == "mean" else c.num_prefix_tokens
    for i in range(c.depth):
        block = f"transformer.layers.{i}"
        queries = head_tokens if i == c.depth - 1 else None
        h = _layer_norm(g, x, params, f"{block}.0.cell.0", c.layer_norm_eps)
        h = _attention(g, h, params, f"{block}.0.cell.1", c.num_heads, dim, queries)
        x = g.op("Add", x if queries is None else _leading(g, x, queries),
                 _branch_scale(g, h, params, f"{block}.0.cell.2.gamma"))
        h = _layer_norm(g, x, params, f"{block}.1.cell.0", c.layer_norm_eps)
        h = _linear(g, _gelu(g, _linear(g, h, params, f"{block}.1.cell.1.dense1"), c.gelu_approximate), params,
                    f"{block}.1.cell.1.dense2")
        x = g.op("Add", x, _branch_scale(g, h, params, f"{block}.1.cell.2.gamma"))
    x = _layer_norm(g, x, params, "norm", c.layer_norm_eps)
    token = lambda i: g.op("Gather", x, g.const(i, np.int64), axis=1)              # (B, D)  # noqa: E731
    if c.distilled:
        logits = g.op("Mul", g.op("Add", _linear(g, token(0), params, "dense"),
                                  _linear(g, token(1), params, "dense_dist")), g.const(0.5))
    else:
        pooled = token(0)
        if c.global_pool == "mean":
            patches = g.op("Slice", x, g.const([c.num_prefix_tokens], np.int64), g.const([1 << 30], np.int64),
                           g.const([1], np.int64))
            pooled = g.op("ReduceMean", patches, axes=[1], keepdims=0)
        logits = _linear(g, pooled, params, "dense")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    graph = helper.make_graph(
        g.nodes, "ms_vit", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                          [batch, c.in_channels, c.image_size, c.image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, c.num_classes])], g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ms_vit")
    model.ir_version = 8
    return model


def export(net, path: str, batch: Optional[int] = None) -> None:
    """Write ``build(net, batch)`` to ``path``, checked by ``onnx.checker``; weights over ~1.8 GB (ViT-H) go to
    ``<path>.data`` beside it."""
    import onnx
    model = build(net, batch)
    external = sum(t.ByteSize() for t in model.graph.initializer) > _EXTERNAL_DATA_BYTES
    onnx.save_model(model, path, save_as_external_data=external, all_tensors_to_one_file=True,
                    location=f"{os.path.basename(path)}.data" if external else None)
    onnx.checker.check_model(path)
