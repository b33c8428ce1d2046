"""Fused CPU kernels where MindSpore's CPU backend is slow, as AOT custom ops (compiled once with g++).

* ``gelu.cc``: MindSpore's CPU ``Erf`` runs at ~10 ns per element; at ViT-B/16 batch 8 the exact GELU took
  12 % of inference. The kernel computes the exact GELU (and its gradient) in one vectorised, multi-threaded
  pass, equal to ~1.5e-7 (PyTorch's CPU erf uses the same approximation).
* ``layer_norm.cc``: LayerNorm over the last axis and its gradient (MindSpore's CPU LayerNormGrad took 6.5 % of
  a ViT-B/16 training step).
* ``heads.cc``, ``patches.cc``: the attention's head split (qkv -> scaled q, k, v) and merge, and the cutting
  of images into patch rows. MindSpore's CPU Transpose keeps an 8-byte index per element for each transpose in
  the graph (~1.9 GB for ViT-B/16 training at batch 8) and gathers through it; these kernels copy whole rows.
* ``softmax.cc``: softmax over the last axis with a one-pass gradient (MindSpore expands the gradient into four
  broadcasting ops: 11 % of a ViT-Ti/16 training step).
* ``attention.cc``: the attention's core, softmax(q k^T / sqrt d) v of every head, one op forward and one backward in
  place of five each (head split, two batched products, softmax, head merge), reading the heads from the qkv
  projection and writing them merged through the GEMM's leading dimensions.
* ``linear.cc``: a Dense layer's forward product with its bias, and its whole gradient (dx, dweight, dbias) in one
  op, on the sgemm of oneDNN (the ``libdnnl.so.3`` MindSpore ships and loads), each of the kernels' threads on its
  own block of the result, with the bias, residual or GELU of that block: on ViT's products it reaches about twice
  the speed of MindSpore's CPU MatMul (benchmarks/bench_gemm.py), and the bias costs no operator (MindSpore's CPU
  BiasAddGrad ran at ~0.5 GB/s).

The kernels run on one pool of threads per process (``common.h``: the caller and one worker per further CPU the process
may use, started once, waiting spinning for 100 us and then sleeping).

The library is compiled on first use into ``$MS_VIT_CACHE/kernels`` (default ``~/.cache/ms_vit/kernels``), its
sha256 recorded beside it (``.so.sha256``). It is loaded (dlopen'ed by MindSpore: it runs as the user) only when the
folder, the library and the record are the user's own (``files.check_private``: owned by the user, writable by no
one else, no symbolic links) and the library's sha256 is the recorded one; a library that differs from its record
is compiled again. A cache that is not the user's is not used: one warning naming the path, and the model runs on
MindSpore's operators (a planted library is never loaded, and the run's numbers are the same). If no compiler is
available, MindSpore has no oneDNN v3 built for the threadpool interface loaded, or the compilation fails, the
``*_op()`` factories and ``linear()`` return ``None`` and the model keeps MindSpore's own operators: slower, same
numbers.
``MS_VIT_FUSED_KERNELS=0`` turns the kernels off for the process; ``create_model(fused_kernels=False)`` for one
model (``ms_vit.models.layers`` makes the choice per block).
``MS_VIT_KERNELS_MARCH`` (tests only; default ``native``) compiles them for another ``-march``, e.g. ``x86-64-v3``
(AVX2, as AMD Zen 3) on an AVX-512 machine: the tests' tolerances must hold for every CPU (docs/testing.md).
"""
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

import mindspore as ms
from mindspore import nn, ops

from ...files import CacheError, cache_root, check_private, private_cache, write_atomically

logger = logging.getLogger("ms_vit")
_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = [os.path.join(_HERE, name)
            for name in ("gelu.cc", "layer_norm.cc", "heads.cc", "patches.cc", "softmax.cc", "linear.cc",
                         "attention.cc")]
_HEADERS = [os.path.join(_HERE, name) for name in ("common.h", "gemm.h")]
# -ffast-math's parts, not -ffast-math itself: given that flag, g++ links crtfastmath.o into the library, whose
# constructor switches the whole process to flush subnormal numbers to zero (the CPU's FTZ/DAZ modes) as soon as the
# library loads: every float operation of the user's process (numpy, MindSpore's own kernels) would change
_FAST_MATH = ["-fno-math-errno", "-fno-trapping-math", "-ffinite-math-only", "-fno-signed-zeros",
              "-fassociative-math", "-freciprocal-math"]
_FLAGS = ["-std=c++17", "-O3", f"-march={os.environ.get('MS_VIT_KERNELS_MARCH', 'native')}", *_FAST_MATH,
          "-fopenmp-simd", "-pthread", "-shared", "-fPIC",
          "-Wl,-z,nodelete"]    # never unloaded: the pool's threads (common.h) run its code until the process ends


_DNNL_THREADPOOL_RUNTIME = 0x8      # dnnl_version()->cpu_runtime of a oneDNN built for the threadpool interface


@functools.cache
def loaded_dnnl():
    """Path of the oneDNN (v3, threadpool runtime: ``dnnl_threadpool_interop_sgemm``) MindSpore has loaded into this
    process (``mindspore/lib/libdnnl.so.3``), or None. Only a library already loaded is taken (nothing new is
    loaded)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            loaded = sorted({line.split()[-1] for line in f if "/libdnnl.so" in line})
    except OSError:
        return None

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                    ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]

    for path in loaded:
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue
        if not hasattr(library, "dnnl_threadpool_interop_sgemm") or not hasattr(library, "dnnl_version"):
            continue
        library.dnnl_version.restype = ctypes.POINTER(Version)
        version = library.dnnl_version().contents
        if version.major == 3 and version.cpu_runtime == _DNNL_THREADPOOL_RUNTIME:
            return path
    return None


def _dnnl_flags():
    """The compiler arguments that link linear.cc to MindSpore's oneDNN (as loaded: see ``loaded_dnnl``), or None."""
    path = loaded_dnnl()
    return None if path is None else [path, f"-Wl,-rpath,{os.path.dirname(path)}"]


def _cache_dir():
    return os.path.join(cache_root(), "kernels")


def _cpu_signature():
    """Compiled with -march=native: the library is only reused on the same kind of CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def library_path():
    """Where the library of these sources, flags and CPU is cached (its name is public: anyone can compute it,
    which is why its folder must be the user's own)."""
    source = b"".join(open(path, "rb").read() for path in _SOURCES + _HEADERS)
    flags = " ".join(_FLAGS + (_dnnl_flags() or []))
    key = hashlib.sha256(source + flags.encode() + _cpu_signature().encode()).hexdigest()[:16]
    return os.path.join(_cache_dir(), f"ms_vit_kernels-{key}.so")


@functools.cache          # compiled (or found in the cache) once per process
def compiled_library():
    """Path of the compiled kernel library, or None if it cannot be built here.

    Processes that start together (msrun's workers on a fresh machine) compile it once: the first takes a lock
    on the cache folder and compiles, the others wait for it and load the result."""
    if os.environ.get("MS_VIT_FUSED_KERNELS", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        logger.info("ms_vit: no C++ compiler found; the model runs on MindSpore's (slower) CPU operators")
        return None
    if _dnnl_flags() is None:
        logger.info("ms_vit: MindSpore has no oneDNN v3 (threadpool runtime) loaded; the model runs on MindSpore's "
                    "(slower) CPU operators")
        return None
    target = library_path()
    try:
        private_cache("kernels")
        if _verified(target):
            return target
        lock_path = os.path.join(_cache_dir(), ".lock")
        lock = os.fdopen(os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600), "a")
        check_private(lock_path)
    except CacheError as error:        # another user's folder or file: nothing of it is loaded
        logger.warning(f"ms_vit: {error}; the fused CPU kernels are not loaded from it (using MindSpore's operators)")
        return None
    except OSError as error:           # e.g. a read-only home: set MS_VIT_CACHE to a writable folder
        logger.warning(f"ms_vit: cannot write the fused CPU kernels to {_cache_dir()} ({error.strerror}); "
                       "using MindSpore's operators (set MS_VIT_CACHE to a writable folder)")
        return None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # released when the file closes
        try:
            if _verified(target):                  # another process compiled it while this one waited
                return target
        except CacheError as error:
            logger.warning(f"ms_vit: {error}; the fused CPU kernels are not loaded from it (using MindSpore's "
                           "operators)")
            return None
        return _compile(compiler, target)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _verified(target):
    """Whether ``target`` is a library this user compiled: it and its sha256 record are the user's own
    (``CacheError`` otherwise) and its sha256 is the recorded one. False when either is missing or they differ
    (then it is compiled again)."""
    record = target + ".sha256"
    if not os.path.lexists(target) or not os.path.lexists(record):
        return False
    check_private(target)
    check_private(record)
    with open(record) as f:
        return f.read().strip() == _sha256(target)


def _compile(compiler, target):
    logger.info(f"ms_vit: compiling the fused CPU kernels into {target} (once)")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=_cache_dir())
    os.close(fd)
    result = subprocess.run([compiler, *_FLAGS, *_SOURCES, *_dnnl_flags(), "-o", tmp], capture_output=True,
                            text=True)
    if result.returncode != 0:
        os.remove(tmp)
        last = (result.stderr.strip().splitlines() or ["failed"])[-1]
        logger.warning(f"ms_vit: compiling the fused CPU kernels failed ({last}); using MindSpore's operators")
        return None
    os.chmod(tmp, 0o700)
    digest = _sha256(tmp)

    def write(record):
        with open(record, "w") as f:
            os.chmod(record, 0o600)
            f.write(digest + "\n")
    os.replace(tmp, target)            # atomic: a process never loads a half-written library
    write_atomically(target + ".sha256", write)
    return target


def _custom(function, out_shape, out_dtype, bprop=None):
    """An AOT Custom op running ``function`` of the compiled library."""
    return ops.Custom(f"{compiled_library()}:{function}", out_shape=out_shape, out_dtype=out_dtype,
                      func_type="aot", bprop=bprop)


def _same(x, *rest):
    """Output shape/dtype: that of the first input."""
    return x


def _kernel_op(factory):
    """Caches ``factory``'s op (one op shared by every cell that uses it, one per argument) and makes it None
    when the library cannot be built here."""
    @functools.cache
    @functools.wraps(factory)
    def build(*args):
        return None if compiled_library() is None else factory(*args)
    return build


@_kernel_op
def gelu_erf_op():
    """A Custom op computing the exact GELU of a float32 tensor on CPU (with its gradient), or None."""
    grad = _custom("GeluErfGrad", _same, _same)

    def bprop(x, out, dout):
        return (grad(x, dout),)

    return _custom("GeluErf", _same, _same, bprop)


@_kernel_op
def layer_norm_op():
    """A Custom op ``(x, gamma, beta, eps) -> LayerNorm over the last axis`` for float32 CPU tensors (with its
    gradient; ``eps`` a float32 tensor of shape (1,)), or None."""
    grad = _custom("LayerNormLastAxisGrad", lambda x, g, e, dy: (x, g, g), lambda x, g, e, dy: (x, g, g))

    def bprop(x, gamma, beta, eps, out, dout):
        dx, dgamma, dbeta = grad(x, gamma, eps, dout)
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    return _custom("LayerNormLastAxis", _same, _same, bprop)


@_kernel_op
def split_heads_op():
    """A Custom op ``qkv (B, N, 3, H, d) -> q * d ** -0.5, k, v``, each (B, H, N, d), for float32 CPU tensors
    (with its gradient), or None."""
    grad = _custom("SplitHeadsGrad", lambda dq, dk, dv: (dq[0], dq[2], 3, dq[1], dq[3]), _same)

    def bprop(qkv, out, dout):
        return (grad(dout[0], dout[1], dout[2]),)

    heads = lambda qkv: ((qkv[0], qkv[3], qkv[1], qkv[4]),) * 3  # noqa: E731
    return _custom("SplitHeads", heads, lambda qkv: (qkv, qkv, qkv), bprop)


@_kernel_op
def swap_middle_axes_op():
    """A Custom op ``(A, B, C, d) -> (A, C, B, d)`` for float32 CPU tensors (its own gradient), or None."""
    swapped = lambda x: (x[0], x[2], x[1], x[3])  # noqa: E731
    swap = _custom("SwapMiddleAxes", swapped, _same)

    def bprop(x, out, dout):
        return (swap(dout),)

    return _custom("SwapMiddleAxes", swapped, _same, bprop)


@_kernel_op
def attention_op():
    """A Custom op ``qkv (B, N, 3, H, d) -> (out (B, N, H, d), probs (B, H, N, N))``: every head's
    softmax(q k^T d^-0.5) v, written with the heads merged, and the softmax (kept for the gradient), for float32 CPU
    tensors (with its gradient, one op), or None."""
    attention_backward = _custom("AttentionBackward", lambda qkv, probs, dout: qkv, _same)

    def bprop(qkv, out, dout):
        return (attention_backward(qkv, out[1], dout[0]),)

    shapes = lambda qkv: ((qkv[0], qkv[1], qkv[3], qkv[4]), (qkv[0], qkv[3], qkv[1], qkv[1]))  # noqa: E731
    return _custom("AttentionForward", shapes, lambda qkv: (qkv, qkv), bprop)


@_kernel_op
def softmax_op():
    """A Custom op computing the softmax over the last axis of a float32 CPU tensor (with its gradient), or None."""
    grad = _custom("SoftmaxLastAxisGrad", _same, _same)

    def bprop(x, out, dout):
        return (grad(out, dout),)

    return _custom("SoftmaxLastAxis", _same, _same, bprop)


def _linear_grad():
    """The gradient of a Dense layer's product (``LinearBackward``, one op: dx, dweight, dbias), in the inputs'
    dtypes. (Each bprop names its ops and functions uniquely: MindSpore's parser resolved the free name ``grad`` of
    one bprop to another's.)"""
    linear_backward = _custom("LinearBackward", lambda x, weight, dy: (x, weight, weight[:1]),
                              lambda x, weight, dy: (x, x, x))

    def linear_grad(x, weight, bias, dout):
        dx, dweight, dbias = linear_backward(x, weight, dout)
        return dx.astype(x.dtype), dweight.astype(weight.dtype), dbias.astype(bias.dtype)
    return linear_grad


def _linear_op():
    """A Custom op ``x (R, I), weight (O, I), bias (O,) -> x weight^T + bias`` for float32 CPU tensors (oneDNN's sgemm,
    linear.cc; ``weight`` may be (O, ...), read as (O, I): a convolution's), with its gradient (one op)."""
    linear_grad = _linear_grad()

    def bprop(x, weight, bias, out, dout):
        return linear_grad(x, weight, bias, dout)

    return _custom("LinearForward", lambda x, weight, bias: (x[0], weight[0]), _same, bprop)


def _linear_residual_op():
    """``_linear_op`` with a residual added in the same pass: ``(x, weight, bias, residual (R, O)) -> x weight^T + bias
    + residual``."""
    linear_residual_grad = _linear_grad()

    def bprop(x, weight, bias, residual, out, dout):
        return linear_residual_grad(x, weight, bias, dout) + (dout,)

    # its own function name: two Custom ops of one name and different arities in a graph are confused by MindSpore
    return _custom("LinearResidualForward", lambda x, weight, bias, residual: residual, _same, bprop)


def _linear_gelu_op():
    """``(x, weight, bias) -> (h, GELU(h))`` with ``h = x weight^T + bias``, the exact GELU, in one op (``h`` is kept
    for the gradient, also one op)."""
    linear_gelu_backward = _custom("LinearGeluBackward", lambda x, weight, h, dy: (x, weight, weight[:1]),
                                   lambda x, weight, h, dy: (x, x, x))

    def bprop(x, weight, bias, out, dout):
        return linear_gelu_backward(x, weight, out[0], dout[1])

    shape = lambda x, weight, bias: ((x[0], weight[0]),) * 2  # noqa: E731
    return _custom("LinearGeluForward", shape, lambda x, weight, bias: (x, x), bprop)


class Linear(nn.Cell):
    """``x (R, I), weight (O, I), bias (O,) [, residual (R, O)] -> x weight^T + bias [+ residual]`` on CPU, computed in
    float32 by oneDNN's sgemm (linear.cc), forward and backward one op each (dx, dweight and dbias together);
    ``gelu``: the exact GELU of that, in the same op. MindSpore's CPU MatMul reaches half oneDNN's speed, and its
    BiasAddGrad runs at ~0.5 GB/s. Create it with ``linear()``."""

    def __init__(self, gelu: bool = False):
        super().__init__()
        self.gelu = gelu
        self.linear = _linear_gelu_op() if gelu else _linear_op()
        self.linear_residual = None if gelu else _linear_residual_op()

    def construct(self, x, weight, bias, residual=None):
        x32, weight, bias = x.astype(ms.float32), weight.astype(ms.float32), bias.astype(ms.float32)
        if self.gelu:
            return self.linear(x32, weight, bias)[1].astype(x.dtype)
        if residual is None:
            return self.linear(x32, weight, bias).astype(x.dtype)
        return self.linear_residual(x32, weight, bias, residual.astype(ms.float32)).astype(x.dtype)


def linear(gelu: bool = False):
    """A ``Linear`` cell, or None if the kernels cannot be built here."""
    return None if compiled_library() is None else Linear(gelu)


@_kernel_op
def patchify_op(patch_size: int):
    """A Custom op ``image (B, C, S, S) -> patches (B, (S/P)^2, C*P*P)``, rows of a patch in (C, P, P) order,
    for float32 CPU tensors (with its gradient), or None."""
    p = patch_size
    unpatchify = _custom("Unpatchify", lambda patches, image: image, _same)

    def bprop(image, out, dout):
        return (unpatchify(dout, image),)

    return _custom("Patchify", lambda x: (x[0], (x[2] // p) * (x[3] // p), x[1] * p * p), _same, bprop)
