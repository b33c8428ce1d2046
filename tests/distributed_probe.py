"""Run by tests/test_distributed.py under msrun (2 CPU workers), with train.py's own setup: what each rank draws and
computes, written to OUT/rank<r>.npz.

    msrun ... tests/distributed_probe.py OUT DATA_DIR

* ``masks``: a training-mode forward pass of a ViT with dropout and stochastic depth on the same input, after
  ``device.same_weights_as_rank0``; ``weights``: its parameters then;
* ``shard``: the first epoch's images of this rank's training shard (pixel sums), as train.py's pipeline reads them;
* ``sharded`` / ``plain``: the weights after 2 AdamW steps on the same gradients, with MindSpore's parallel optimizer
  (each rank updating its share, then broadcasting; as MindSpore sets it up on Ascend, where it is supported) and
  without.
"""
import os
import sys

import mindspore as ms
import numpy as np

from ms_vit import create_model, data, device
from ms_vit.optim import AdamW

TINY = dict(num_classes=5, image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_dim=96,
            fused_kernels=False)


def tiny(**options):
    net = create_model("vit_ti_16_224", **TINY, **options)
    device.same_weights_as_rank0(net)
    return net


def adamw_steps(net, start, sharded: bool, rank: int):
    for param, value in zip(net.trainable_params(), start):
        param.set_data(ms.Tensor(value))
    optimizer = AdamW(net.trainable_params(), learning_rate=1e-2, weight_decay=0.05)
    if sharded:                       # what Optimizer._use_parallel_optimizer sets on Ascend in data-parallel mode
        optimizer.use_parallel, optimizer.dev_num = True, 2
        optimizer.param_rank = optimizer._get_parameter_group_id()
        optimizer.optim_filter = tuple(owner == rank for owner in optimizer.param_rank)
    rng = np.random.default_rng(7)                    # the same gradients on every rank (as after an AllReduce)
    for _ in range(2):
        grads = tuple(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32)) for p in net.trainable_params())
        optimizer(grads)
    return np.concatenate([p.asnumpy().ravel() for p in net.trainable_params()])


def main(out, data_dir):
    setup = device.setup("CPU", "graph", seed=42, distribute=True)
    rank = setup.rank
    net = tiny(drop_rate=0.3, drop_path_rate=0.5)
    weights = np.concatenate([p.asnumpy().ravel() for p in net.get_parameters()])
    net.set_train(True)
    masks = net(ms.Tensor(np.ones((4, 3, 32, 32), np.float32))).asnumpy()

    split = os.path.join(data_dir, "train")
    dataset = data.create_dataset(split, data.list_classes(split), net.config, 1, training=True, num_workers=1,
                                  augment=False, num_shards=2, shard_id=rank, seed=42)
    shard = [float(images.sum()) for images, _ in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]

    net = tiny()
    start = [p.asnumpy().copy() for p in net.trainable_params()]
    sharded = adamw_steps(net, start, True, rank)
    plain = adamw_steps(net, start, False, rank)
    np.savez(os.path.join(out, f"rank{rank}.npz"), masks=masks, weights=weights, shard=np.array(shard),
             sharded=sharded, plain=plain)


if __name__ == "__main__":
    main(*sys.argv[1:3])
