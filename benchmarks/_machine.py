"""What machine a benchmark ran on (every benchmark prints it first), and its float32 matrix-product peak.

``describe()``: the CPU model, its cores, the vector extensions that decide which kernels run (AVX2, AVX-512 and its
VNNI/BF16 parts, AMX), memory. ``sgemm_peak()``: the fastest float32 GEMM this machine does, measured now with large
square products in numpy (OpenBLAS), PyTorch, MindSpore and ms_vit's kernels (oneDNN), so that a benchmark can say
what fraction of it a case reaches."""
import os

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def describe() -> str:
    """``CPU: AMD EPYC (family 25, model 17), 2 cores, AVX2 FMA AVX512F ..., 23.4 GiB``."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = " ".join(flag.upper() for flag in ISA_FLAGS if flag in flags) or "no AVX2"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"CPU: {info.get('model name', 'unknown')} (family {info.get('cpu family', '?')}, model "
            f"{info.get('model', '?')}), {os.cpu_count()} cores, {isa}, {memory:.1f} GiB")


# One library's float32 GEMM, timed in a process of its own (PyTorch and MindSpore are not imported together)
_GEMM = """
import sys, time, numpy as np
size, repeats, library = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
if library == "numpy":
    step = lambda: a @ a
elif library == "torch":
    import torch
    t = torch.from_numpy(a)
    step = lambda: torch.mm(t, t)
elif library == "mindspore":
    import mindspore as ms
    ms.set_device("CPU")
    matmul, m = ms.ops.MatMul(), ms.Tensor(a)
    step = lambda: matmul(m, m).asnumpy()
else:                                     # ms_vit's kernels: MindSpore's oneDNN sgemm on the kernels' threads
    import mindspore as ms
    sys.path.insert(0, sys.argv[4])
    from ms_vit.models.kernels import linear
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    op, m, zero = linear(), ms.Tensor(a), ms.Tensor(np.zeros(size, np.float32))
    step = lambda: op(m, m, zero).asnumpy()
step()
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    step()
    best = min(best, time.perf_counter() - start)
print(2.0 * size ** 3 / best / 1e9)
"""


def sgemm_peak(size: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of a ``size`` x ``size`` float32 matrix product in each library that runs here (numpy's BLAS,
    PyTorch, MindSpore's MatMul, ms_vit's kernels: MindSpore's oneDNN; each in a fresh process), and ``"peak"``: the
    best of them."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = {}
    for library in ("numpy", "torch", "mindspore", "ms_vit"):
        run = subprocess.run([sys.executable, "-c", _GEMM, str(size), str(repeats), library, root],
                             capture_output=True, text=True, env=dict(os.environ, GLOG_v="3"))
        if run.returncode == 0:
            found[library] = float(run.stdout.strip().splitlines()[-1])
    found["peak"] = max(found.values())
    return found


def vit_gflops(config, training: bool = False) -> float:
    """The floating-point operations (GFLOP) of one image through a ViT of ``config`` (a ``ViTConfig``): the matrix
    products, which are all but a few per cent; a training step counts three times the forward pass (the backward
    pass computes two products per forward one)."""
    n, d, m = config.num_patches + config.num_prefix_tokens, config.embed_dim, config.mlp_dim
    patch = 2 * config.num_patches * config.in_channels * config.patch_size ** 2 * d
    block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * m
    forward = patch + config.depth * block + 2 * d * config.num_classes
    return forward * (3 if training else 1) / 1e9
