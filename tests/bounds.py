"""Float32 error bounds: where the tests' tolerances come from (docs/testing.md).

A tolerance here bounds the float32 rounding error of the computation it checks; it is never a value fitted to one
machine (the suite runs on AMD Zen 3 and Zen 4 and on Intel Xeon, whose kernels sum in different orders, with
different vector widths and thread splits). Float32's unit roundoff is ``U = 2 ** -24``: one operation returns its
exact result times (1 + d), ``|d| <= U``. Two bounds:

* Worst case, for one operation or a short chain: a sum or dot product of n terms, in any order (lanes, blocks,
  threads, FMA or not), is within ``gamma(n) = n U / (1 - n U)`` of the sum of the terms' absolute values (Higham,
  *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and (3.5)).
* Probabilistic, for a network (``vit_forward``): worst-case bounds multiply through each layer's |weights| and grow
  ~10x per layer, far beyond any real error. Rounding errors are modelled as independent, zero-mean and bounded
  (Higham & Mary, "A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41, 2019):
  their root-sum-square ``s`` is carried through the layers with the squares of the layers' derivatives, and
  ``|error| <= LAMBDA * s`` fails with probability at most 2 exp(-LAMBDA^2 / 2) per value (Hoeffding).

Two float32 computations of the same math differ by at most the sum of their bounds (2x one bound).

``assert_within`` checks a bound and, with ``MS_VIT_TOLERANCE_LOG=FILE`` set, appends each check's largest
observed error, its bound and their ratio to FILE (one JSON line per check: the margins on a machine, a thread count,
an ISA).
"""
import json
import os

import numpy as np
from scipy.special import erf

U = 2.0 ** -24
LAMBDA = 6.0              # 2 exp(-18) = 3e-8: the probability that one value exceeds its probabilistic bound
LN2 = 0.6931471805599453


def gamma(n):
    """Higham's gamma_n = n U / (1 - n U): the relative error bound of a float32 sum of n terms in any order."""
    return n * U / (1 - n * U)


def exp_error(x):
    """Relative error bound of a float32 exp(x), for the implementations the models run on. MindSpore 2.10's CPU exp
    (nnacl ``VexpFp32``, also in its Softmax) reduces x by n 0.693147f, n = round(x / ln 2): that constant is 1.77e-7
    short of ln 2, an error of n 1.77e-7; then a degree-5 Taylor polynomial, within 3.41e-6 of e^r for
    |r| <= ln 2 / 2 (r^6 / 720 / e^-0.347); 6 roundings. (It measures 138 U at x = -19.8, this bound 149 U.)
    ms_vit's kernels' exp_approx (Cephes, ~1e-7), onnxruntime's and torch's (2 ulp) are within it."""
    return 3.41e-6 + (np.abs(x) / LN2 + 0.5) * 1.77e-7 + 6 * U


def tanh_error(z):
    """Absolute error bound of a float32 tanh(z). MindSpore 2.10's CPU tanh (nnacl) is the Pade approximant
    z (135135 + 17325 a + 378 a^2 + a^3) / (135135 + 62370 a + 3150 a^2 + 28 a^3), a = z^2, and +-1 beyond |z| = 5
    (it equals that formula to 4.3 U): 1.0e-4 off at |z| = 5 (it returns 1.0000098). Its difference from tanh
    here, plus 8 U for its float32 evaluation; accurate tanh (onnxruntime, torch) is within it."""
    a = np.square(z)
    pade = z * (((a + 378) * a + 17325) * a + 135135) / (((28 * a + 3150) * a + 62370) * a + 135135)
    return np.abs(np.where(np.abs(z) > 5, np.sign(z), pade) - np.tanh(z)) + 8 * U


def erf_error(z):
    """Absolute error bound of a float32 erf(z). The fused kernel's (and PyTorch's vectorised) erf is Abramowitz &
    Stegun 7.1.26, 1 - poly(t) exp(-z^2), t = 1 / (1 + 0.3275911 |z|): within 1.5e-7 of erf, plus its float32
    evaluation: Horner's 5 steps (gamma(10) of sum |c_k| t^k), t's 3 roundings through poly', exp_approx (Cephes:
    3 U, and the rounding of z^2: 2 z^2 U), the product and the difference. Largest at z = 0: 65 U (3.9e-6; the kernel
    measures 10 U). MindSpore's, onnxruntime's and scipy's erf are within 2 U."""
    a = np.abs(z)
    t = 1 / (1 + 0.3275911 * a)
    c = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
    terms = sum(abs(ck) * t ** (k + 1) for k, ck in enumerate(c))                 # sum |c_k| t^k
    slope = np.abs(sum((k + 1) * ck * t ** k for k, ck in enumerate(c)))         # poly'(t)
    poly = sum(ck * t ** (k + 1) for k, ck in enumerate(c))
    evaluation = U * (10 * terms + 3 * t * slope + np.abs(poly) * (2 * a * a + 5)) * np.exp(-a * a) + 2 * U
    return 1.5e-7 + evaluation


def gelu_error(x):
    """Absolute error bound of one float32 exact GELU 0.5 x (1 + erf(x / sqrt 2)) of float32 x: the erf's
    (``erf_error``, times 0.5 |x|), the rounding of x / sqrt 2 (through erf's slope), 3 roundings of the result."""
    x = np.asarray(x, np.float64)
    y = 0.5 * np.abs(x) * (1 + np.abs(erf(x / np.sqrt(2))))
    return 0.5 * np.abs(x) * (erf_error(x / np.sqrt(2)) + 2 * U * np.abs(x) * np.exp(-0.5 * x * x)) + 3 * U * y


def assert_within(actual, expected, bound, what=""):
    """``|actual - expected| <= bound`` everywhere (``bound`` a number or an array broadcast against them)."""
    error, bound, ratio = _compare(actual, expected, bound, what)
    worst = np.unravel_index(np.argmax(ratio), ratio.shape)
    assert ratio[worst] <= 1, f"{what}: |difference| {error[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def assert_beyond(actual, other, bound, what=""):
    """Some ``|actual - other|`` exceeds ``bound``: a check with this bound tells ``actual`` from ``other`` (what a
    bug would compute)."""
    _, _, ratio = _compare(actual, other, bound, what + " (must exceed)")
    assert ratio.max() > 1, f"{what}: |difference| at most {ratio.max():.3g} x its bound: indistinguishable"


def _compare(actual, expected, bound, what):
    """|actual - expected|, the bound and their ratio, as arrays; logged to $MS_VIT_TOLERANCE_LOG if set."""
    error = np.atleast_1d(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)))
    bound = np.broadcast_to(np.asarray(bound, np.float64), error.shape)
    ratio = np.where(error > 0, error / np.maximum(bound, np.finfo(np.float64).tiny), 0.0)
    log = os.environ.get("MS_VIT_TOLERANCE_LOG")
    if log:
        worst = np.unravel_index(np.argmax(ratio), ratio.shape)
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(log, "a") as f:
            f.write(json.dumps(dict(test=test, what=what, error=float(error.max()), bound=float(bound[worst]),
                                    ratio=float(ratio[worst]))) + "\n")
    return error, bound, ratio


# --- a ViT's forward pass with the root-sum-square of its rounding errors --------------------------------------------
# Each function takes values v (float64) and the root-sum-square s of their errors (>= 0, same shape) and returns
# both for its output: s_out^2 = sum (derivative * s_in)^2 + sum (own roundings)^2. ``u`` is the unit roundoff of the
# values passed between operations: U in float32; 2^-11 in float16 (AMP), where matrix products still multiply and
# sum in float32 (MindSpore's CPU kernels, Ascend's Cube) and LayerNorm and the softmax compute in float32.

def _rss(*terms):
    return np.sqrt(sum(np.square(t) for t in terms))


def _sum_rounding(total, total_of_squares, k):
    """Root-sum-square of the roundings of a float32 sum of k terms, from the terms' sum and sum of squares: in an
    order unrelated to their values (any kernel's), the j-th partial sum is ~ j mean + sqrt(j) sd, rounded once
    (U); sequential order has the largest partial sums (blocked, pairwise, per-lane orders smaller ones)."""
    mean = total / k
    var = np.maximum(total_of_squares / k - np.square(mean), 0)
    return U * np.sqrt(k ** 3 / 3 * np.square(mean) + k ** 2 / 2 * var)


def linear(v, s, weight, bias, u=U):
    """x W^T + b: K products (each rounded in float32; in float16 the weights are rounded instead), their sum, a
    constant folded into W (the ONNX export folds the attention scale into the query's weights), the output."""
    k = weight.shape[1]
    out = v @ weight.T + bias
    carried = np.sqrt(np.square(s) @ np.square(weight).T)
    squares = np.square(v) @ np.square(weight).T
    own = _rss(_sum_rounding(out - bias, squares, k), np.sqrt(2 * squares) * u, u * np.abs(out))
    return out, _rss(carried, own)


def matmul(a, sa, b, sb, u=U):
    """a @ b (K terms)."""
    k = a.shape[-1]
    out = a @ b
    carried = np.sqrt(np.square(sa) @ np.square(b) + np.square(a) @ np.square(sb))
    squares = np.square(a) @ np.square(b)
    return out, _rss(carried, _sum_rounding(out, squares, k), np.sqrt(squares) * U, u * np.abs(out))


def layer_norm(v, s, g, b, eps, u=U):
    """(x - mean) / sqrt(var + eps) g + b over the last axis (D), in float32. Carried through the derivative
    g/sd (dx_i - mean(dx) - xhat_i mean(xhat dx)); own: the sums of the mean and of the variance (one-pass kernels
    sum x^2 and subtract mean^2), the square root, 5 roundings and the output's."""
    d = v.shape[-1]
    mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    sd = np.sqrt(var + eps)
    xhat = (v - mean) / sd
    out = xhat * g + b
    s2 = np.square(s)
    spread = (s2.sum(-1, keepdims=True) + 2 * np.abs(xhat) * (np.abs(xhat) * s2).sum(-1, keepdims=True)
              + np.square(xhat) * (np.square(xhat) * s2).sum(-1, keepdims=True)) / d ** 2
    carried = np.abs(g) / sd * np.sqrt(2 * s2 + 2 * spread)
    squares = np.square(v)
    mean_error = _sum_rounding(v.sum(-1, keepdims=True), squares.sum(-1, keepdims=True), d) / d
    var_error = (_sum_rounding(squares.sum(-1, keepdims=True), np.square(squares).sum(-1, keepdims=True), d) / d
                 + 2 * np.abs(mean) * mean_error + 2 * U * (var + np.square(mean))) / (var + eps)  # relative
    own = _rss(np.abs(g) / sd * mean_error, np.abs(xhat * g) * _rss(var_error / 2, np.sqrt(5) * U),
               max(u, U) * np.abs(out))
    return out, _rss(carried, own)


def gelu(v, s, approximate, u=U):
    """Exact (erf) or tanh GELU: the slope carries the input's error; own: 0.5 |x| times the erf's (tanh's) error,
    and 3 roundings."""
    if approximate:
        c = 0.7978845608028654
        z = c * (v + 0.044715 * v ** 3)
        t = np.tanh(z)
        out = 0.5 * v * (1 + t)
        slope = 0.5 * (1 + t) + 0.5 * v * (1 - t ** 2) * c * (1 + 3 * 0.044715 * v ** 2)
        function_error = tanh_error(z) + (1 - t ** 2) * 4 * u * np.abs(z)   # tanh's, the rounding of z
    else:
        out = 0.5 * v * (1 + erf(v / np.sqrt(2)))
        slope = 0.5 * (1 + erf(v / np.sqrt(2))) + v * np.exp(-0.5 * v * v) / np.sqrt(2 * np.pi)
        function_error = erf_error(v / np.sqrt(2)) + 2 * u * np.abs(v) * np.exp(-0.5 * v * v)   # and x / sqrt 2
    return out, _rss(slope * s, 0.5 * np.abs(v) * function_error, np.sqrt(3) * u * np.abs(out))


def softmax(v, s, u=U):
    """Over the last axis (N), in float32: dp_i = p_i (dx_i - sum_j p_j dx_j) carries; own: x - max, the exp
    (``exp_error``), the sum of N, the division, the output's rounding."""
    n = v.shape[-1]
    shifted = v - v.max(-1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(-1, keepdims=True)
    p = e / total
    carried = p * np.sqrt(2 * np.square(s) + 2 * (np.square(p * s)).sum(-1, keepdims=True))
    sum_error = (_sum_rounding(total, np.square(e).sum(-1, keepdims=True), n)
                 + (e * exp_error(shifted)).sum(-1, keepdims=True)) / total
    own = p * _rss(U * shifted, exp_error(shifted), sum_error, np.sqrt(2) * U, u)
    return p, _rss(carried, own)


def add(a, sa, b, sb, u=U):
    out = a + b
    return out, _rss(sa, sb, u * np.abs(out))


def scale(v, s, factor, u=U):
    """v times a factor (rounded once itself: its own rounding and the product's)."""
    out = v * factor
    return out, _rss(s * np.abs(factor), np.sqrt(2) * u * np.abs(out))


def attention(v, s, p, prefix, heads, u=U):
    """Multi-head self-attention of (B, T, D); also the attention weights (B, H, T, T) and their error."""
    b, t, dim = v.shape
    d = dim // heads
    qkv, sqkv = linear(v, s, p[prefix + "qkv.weight"], p[prefix + "qkv.bias"], u)

    def split(x, j):
        return x[..., j * dim:(j + 1) * dim].reshape(b, t, heads, d).transpose(0, 2, 1, 3)    # (B, H, T, d)

    q, sq = scale(split(qkv, 0), split(sqkv, 0), d ** -0.5, u)
    k, sk, vv, sv = split(qkv, 1), split(sqkv, 1), split(qkv, 2), split(sqkv, 2)
    scores, sscores = matmul(q, sq, k.transpose(0, 1, 3, 2), sk.transpose(0, 1, 3, 2), U)   # float32 scores
    weights, sweights = softmax(scores, sscores, u)
    out, sout = matmul(weights, sweights, vv, sv, u)
    out, sout = (x.transpose(0, 2, 1, 3).reshape(b, t, dim) for x in (out, sout))
    out, sout = linear(out, sout, p[prefix + "out.weight"], p[prefix + "out.bias"], u)
    return out, sout, weights, sweights


def parameters(net):
    """``net``'s parameters by name, float64 (exactly its float32 values)."""
    return {q.name: q.asnumpy().astype(np.float64) for q in net.get_parameters()}


def vit_forward(config, p, x, unit=U):
    """A ViT (``config``, parameters ``p`` by ms_vit name: ``parameters(net)``) on images ``x``, in float64, in
    evaluation mode.

    Returns (logits, bound, attention, attention_bound): ``bound`` bounds |computed logits - logits| for one
    evaluation of the same network in float32 (``unit`` U: MindSpore's operators, the fused kernels, ONNX Runtime,
    timm) or in float16 (``unit`` 2^-11, AMP O2), per logit (LAMBDA times the root-sum-square of its rounding
    errors); ``attention`` (depth, B, H, T, T) the blocks' attention weights, with theirs."""
    c, u = config, unit
    x = np.asarray(x, np.float64)
    b, g, ps = x.shape[0], c.image_size // c.patch_size, c.patch_size
    patches = x.reshape(b, c.in_channels, g, ps, g, ps).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)
    h, s = linear(patches, (u > U) * u * np.abs(patches), p["patch_embedding.conv.weight"].reshape(c.embed_dim, -1),
                  p["patch_embedding.conv.bias"], u)
    prefix = [np.broadcast_to(p["cls"], (b, 1, c.embed_dim))]
    if c.distilled:
        prefix.append(np.broadcast_to(p["dist_token"], (b, 1, c.embed_dim)))
    rounded = [(u > U) * u * np.abs(t) for t in prefix]
    if c.no_embed_class:                                        # DeiT III: the position embedding on the patches
        h, s = add(h, s, p["pos_embedding"], 0, u)
        h, s = np.concatenate(prefix + [h], 1), np.concatenate(rounded + [s], 1)
    else:
        h, s = np.concatenate(prefix + [h], 1), np.concatenate(rounded + [s], 1)
        h, s = add(h, s, p["pos_embedding"], 0, u)
    maps = []
    for i in range(c.depth):
        block = f"transformer.layers.{i}."
        a, sa = layer_norm(h, s, p[block + "0.cell.0.gamma"], p[block + "0.cell.0.beta"], c.layer_norm_eps, u)
        a, sa, w, sw = attention(a, sa, p, block + "0.cell.1.", c.num_heads, u)
        maps.append((w, sw))
        if c.layer_scale_init is not None:
            a, sa = scale(a, sa, p[block + "0.cell.2.gamma"], u)
        h, s = add(h, s, a, sa, u)
        a, sa = layer_norm(h, s, p[block + "1.cell.0.gamma"], p[block + "1.cell.0.beta"], c.layer_norm_eps, u)
        a, sa = linear(a, sa, p[block + "1.cell.1.dense1.weight"], p[block + "1.cell.1.dense1.bias"], u)
        a, sa = gelu(a, sa, c.gelu_approximate, u)
        a, sa = linear(a, sa, p[block + "1.cell.1.dense2.weight"], p[block + "1.cell.1.dense2.bias"], u)
        if c.layer_scale_init is not None:
            a, sa = scale(a, sa, p[block + "1.cell.2.gamma"], u)
        h, s = add(h, s, a, sa, u)
    h, s = layer_norm(h, s, p["norm.gamma"], p["norm.beta"], c.layer_norm_eps, u)
    if c.distilled:                                             # DeiT: both heads, averaged
        logits, sl = linear(h[:, 0], s[:, 0], p["dense.weight"], p["dense.bias"], u)
        dist, sd = linear(h[:, 1], s[:, 1], p["dense_dist.weight"], p["dense_dist.bias"], u)
        logits, sl = add(logits, sl, dist, sd, u)
        logits, sl = logits / 2, sl / 2
    else:
        if c.global_pool == "mean":
            tokens = h[:, c.num_prefix_tokens:]
            n = tokens.shape[1]
            pooled = tokens.mean(1)
            sp = _rss(np.sqrt(np.square(s[:, c.num_prefix_tokens:]).sum(1)) / n,
                      _sum_rounding(tokens.sum(1), np.square(tokens).sum(1), n) / n, u * np.abs(pooled))
        else:
            pooled, sp = h[:, 0], s[:, 0]
        logits, sl = linear(pooled, sp, p["dense.weight"], p["dense.bias"], u)
    return logits, LAMBDA * sl, np.stack([w for w, _ in maps]), LAMBDA * np.stack([sw for _, sw in maps])


# --- a ViT's gradients ------------------------------------------------------------------------------------------------

def vit_sum_lengths(config, batch):
    """The lengths of the sums along a ViT's longest chain from the images to a weight's gradient: the forward pass
    (patch projection, per block qkv, q k^T, attention x v, projection, MLP in and out, head), the backward pass
    (head, per block MLP out and in, projection, attention x v and q k^T, softmax, qkv) and the weight gradient's
    sum over the batch's B x T rows."""
    c = config
    d, t = c.embed_dim // c.num_heads, c.num_patches + c.num_prefix_tokens
    patch = c.in_channels * c.patch_size ** 2
    forward = patch + c.depth * (4 * c.embed_dim + d + t + c.mlp_dim - c.embed_dim) + c.embed_dim
    backward = c.num_classes + c.depth * (2 * c.embed_dim + c.mlp_dim + d + 2 * t + 3 * c.embed_dim)
    return forward + backward + batch * t


def gradient_relative_bound(config, batch):
    """Bound on |float32 gradient - exact| of a ViT's loss on a batch, relative to the largest value of the
    parameter's gradient: the probabilistic model collapsed to one number (``vit_forward`` per value is the forward
    pass's): rounding errors through sums of n_1, n_2, ... terms add up to LAMBDA U sqrt(sum n_i) times the terms'
    size (``vit_sum_lengths``); a gradient value sums R = B x T products of random sign, whose size is up to
    sqrt(R) times the tensor's largest value."""
    rows = batch * (config.num_patches + config.num_prefix_tokens)
    return LAMBDA * U * np.sqrt(vit_sum_lengths(config, batch)) * np.sqrt(rows)


def gradient_bound(config, batch, gradient):
    """``gradient_relative_bound`` times the gradient tensor's largest value."""
    return gradient_relative_bound(config, batch) * np.abs(gradient).max()
