"""Device, execution mode, seeds and distributed setup for the entry scripts.

``setup`` picks the device (Ascend, else GPU, else CPU), says which and, when a backend is missing, why, in one line
(``describe``): MindSpore's own warnings are left on. Under data parallelism every random draw is seeded by rank:
MindSpore's random operators (each rank its own dropout and stochastic-depth masks, as each GPU in torch's DDP)
and the data pipeline's (each rank its own crops, flips, RandAugment, erasing and Mixup: with one seed, the two
copies of an image that repeated augmentation puts at the same position on two ranks were byte-identical). The
shuffle, which the ranks must share so that their shards stay disjoint, is seeded apart, with the run's seed
(``data.create_dataset(seed=...)``). The ranks start from the same weights because ``same_weights_as_rank0`` copies
rank 0's over the others after the model is built.
"""
import os
from typing import List, NamedTuple, Optional

import mindspore as ms
import mindspore.dataset as ds
import numpy as np

DEVICES = ("Ascend", "GPU", "CPU")
# Set by the launchers MindSpore's init() understands: msrun (and its dynamic cluster), an Ascend rank table,
# OpenMPI's mpirun.
_LAUNCHER_VARIABLES = ("MS_ROLE", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "OMPI_COMM_WORLD_SIZE")
LAUNCH_HINT = ("msrun --worker_num=N --local_worker_num=N --master_port=PORT --log_dir=LOGS --join=True "
               "train.py --distribute ...")
# What a missing backend needs, by the library MindSpore could not load
_MISSING = {"Ascend": "the CANN toolkit (source its set_env.sh) and MindSpore's Ascend package",
            "GPU": "a GPU build of MindSpore with CUDA and cuDNN"}


# Ascend SoCs (MindSpore's ``get_ascend_soc_version``) of Atlas A2 and later: 910B (A2), 910C ("ascend910_93", A3)
# and 950, the SoCs MindSpore 2.10 knows with bfloat16 matrix units and FlashAttention; not 910A ("ascend910"),
# 310P, 310B.
ATLAS_A2_AND_LATER = ("ascend910b", "ascend910_93", "ascend950")


class Setup(NamedTuple):
    device_target: str
    rank: int
    group_size: int
    notes: List[str]               # why a faster backend is not used, one line each


def _backend_available(target: str) -> bool:
    """Whether MindSpore loaded ``target``'s plugin (asked without MindSpore's own warnings about it)."""
    if target == "CPU":
        return True
    try:
        from mindspore._c_expression import MSContext
        return bool(MSContext.get_instance().is_pkg_support_device(target))
    except (ImportError, AttributeError):
        return ms.hal.is_available(target)


def ascend_soc() -> str:
    """The Ascend SoC MindSpore runs on ("ascend910b", ...), or "" off Ascend."""
    try:
        from mindspore._c_expression import MSContext
        return MSContext.get_instance().get_ascend_soc_version() or ""
    except (ImportError, AttributeError, RuntimeError):
        return ""


def _missing_reason(target: str) -> str:
    """Why ``target`` cannot be used: MindSpore's plugin-loading error for it, shortened, and what it needs."""
    try:
        from mindspore._c_expression import MSContext
        errors = MSContext.get_instance().load_plugin_error()
    except (ImportError, AttributeError):
        errors = ""
    name = {"Ascend": "ascend", "GPU": "gpu"}[target]
    lines = [line for line in errors.splitlines() if name in line.lower()]
    detail = lines[0].split(" failed. ")[-1].split(": cannot open")[0] if lines else ""
    found = f"{detail} not found" if detail else "not in this MindSpore package"
    return f"{target} unavailable ({found}: it needs {_MISSING[target]})"


def available_device() -> str:
    """The fastest device MindSpore can use here: Ascend, then GPU, then CPU."""
    return next(d for d in DEVICES if _backend_available(d))


def describe(target: str, notes: List[str]) -> str:
    """``device: CPU (Ascend unavailable (...); GPU unavailable (...))``."""
    return f"device: {target}" + (f" ({'; '.join(notes)})" if notes else "")


def setup(device_target: Optional[str] = None, mode: str = "graph", seed: Optional[int] = None,
          distribute: bool = False) -> Setup:
    """Select the device and execution mode; initialise the collective backend under ``distribute`` (HCCL on
    Ascend, NCCL on GPU, MindSpore's own TCP collectives on CPU, as started by ``msrun``) in data-parallel mode with
    gradient averaging; seed (see the module docstring).

    Returns the device, this process's rank, the number of ranks and, when the device was chosen automatically,
    why each faster backend is not used."""
    if distribute and not any(v in os.environ for v in _LAUNCHER_VARIABLES):
        raise ValueError(f"--distribute runs one process per device, started by MindSpore's launcher: {LAUNCH_HINT} "
                         "(the virtual environment's bin/ first on PATH)")
    if device_target is not None and device_target not in DEVICES:
        raise ValueError(f"unknown device_target {device_target!r}: choose one of {', '.join(DEVICES)}")
    if device_target and not _backend_available(device_target):
        raise ValueError(f"--device_target {device_target}: {_missing_reason(device_target)}; the available device "
                         f"is {available_device()}")
    target = device_target or available_device()
    notes = [] if device_target else [_missing_reason(d) for d in DEVICES[:DEVICES.index(target)]]
    ms.set_device(target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    rank, group_size = 0, 1
    if distribute:
        from mindspore.communication import get_group_size, get_rank, init
        try:
            init()
        except RuntimeError as exc:             # the scheduler (MS_SCHED), when a worker stopped on an error
            raise ValueError(f"the distributed job stopped: {str(exc).splitlines()[0]} (each worker's own error "
                             "is in its log)") from None
        rank, group_size = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=group_size)
    if seed is not None:
        ms.set_seed(seed + rank)                   # random operators: each rank its own masks
        ds.config.set_seed(seed + rank)            # the pipeline's random ops (the shuffle is seeded apart)
    return Setup(target, rank, group_size, notes)


def same_weights_as_rank0(net) -> None:
    """Copy rank 0's parameters over every rank's (an AllReduce of rank 0's values and the others' zeros): the
    ranks start alike although each drew its own initial weights."""
    from mindspore import ops
    from mindspore.communication import get_rank
    keep = 1.0 if get_rank() == 0 else 0.0
    all_reduce = ops.AllReduce()
    for param in net.get_parameters():
        total = all_reduce(ms.Tensor(param.asnumpy().astype(np.float32) * keep))
        param.set_data(ms.Tensor(total.asnumpy().astype(param.asnumpy().dtype)))
