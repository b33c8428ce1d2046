"""Device, execution mode, AMP and distributed setup for the entry scripts.

AMP policy: O2 (float16 compute; LayerNorm, softmax and loss in float32) with dynamic loss scaling on
Ascend, where float16 Cube units are several times faster; O0 (float32) on CPU and GPU.
"""
import os
from typing import Optional, Tuple

import mindspore as ms
import mindspore.dataset as ds
from mindspore.train import DynamicLossScaleManager

DEVICES = ("Ascend", "GPU", "CPU")
AMP_LEVELS = ("O0", "O1", "O2", "O3")
# Set by the launchers MindSpore's init() understands: msrun (and its dynamic cluster), an Ascend rank table,
# OpenMPI's mpirun.
_LAUNCHER_VARIABLES = ("MS_ROLE", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "OMPI_COMM_WORLD_SIZE")
LAUNCH_HINT = ("msrun --worker_num=N --local_worker_num=N --master_port=PORT --log_dir=LOGS --join=True "
               "train.py --distribute ...")


def available_device() -> str:
    """The fastest device MindSpore can use here: Ascend, then GPU, then CPU."""
    return next(d for d in DEVICES if d == "CPU" or ms.hal.is_available(d))


def default_amp_level(device_target: str) -> str:
    return "O2" if device_target == "Ascend" else "O0"


def loss_scale_manager(amp_level: str):
    """Dynamic loss scaling for float16 training (O2/O3); none for float32."""
    if amp_level in ("O2", "O3"):
        return DynamicLossScaleManager(init_loss_scale=2.0 ** 16, scale_factor=2, scale_window=1000)
    return None


def setup(device_target: Optional[str] = None, mode: str = "graph", amp_level: Optional[str] = None,
          seed: Optional[int] = None, distribute: bool = False) -> Tuple[str, str, int, int]:
    """Select the device and execution mode; returns ``(device_target, amp_level, rank, group_size)``.

    ``seed`` seeds MindSpore's initialisers and the dataset pipeline (shuffling, augmentation): under
    ``distribute`` every rank must shuffle with the same seed for the shards to stay disjoint.

    With ``distribute``, initialises the collective backend (HCCL on Ascend, NCCL on GPU, MindSpore's own TCP
    collectives on CPU), as started by ``msrun``, in data-parallel mode with gradient averaging."""
    if distribute and not any(v in os.environ for v in _LAUNCHER_VARIABLES):
        raise ValueError(f"--distribute runs one process per device, started by MindSpore's launcher: {LAUNCH_HINT} "
                         "(the virtual environment's bin/ first on PATH)")
    target = device_target or available_device()
    if target not in DEVICES:
        raise ValueError(f"unknown device_target {target!r}: choose one of {', '.join(DEVICES)}")
    if target != "CPU" and not ms.hal.is_available(target):
        raise ValueError(f"device_target {target} is not available on this machine (available: "
                         f"{available_device()})")
    ms.set_device(target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if seed is not None:
        ms.set_seed(seed)
        ds.config.set_seed(seed)
    rank, group_size = 0, 1
    if distribute:
        from mindspore.communication import init, get_rank, get_group_size
        init()
        rank, group_size = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=group_size)
    return target, amp_level or default_amp_level(target), rank, group_size
