"""Run by tests/test_distributed.py under msrun (2 CPU workers), with train.py's own setup: what each rank draws and
computes, written to OUT/rank<r>.npz.

    msrun ... tests/distributed_probe.py OUT DATA_DIR

* ``masks``: a training-mode forward pass of a ViT with dropout and stochastic depth on the same input, after
  ``device.same_weights_as_rank0``; ``weights``: its parameters then;
* train.py's training pipeline over 2 epochs of this rank's shard (batch 2, 2 workers), each image as it comes out:
  ``plain_ids`` / ``repeat_ids``: not augmented (each image's pixel sum names it), without and with repeated
  augmentation (2 copies); ``repeat_crops``: with repeated augmentation, the random resized crop and flip only;
  ``repeat_deit``: with DeiT's RandAugment and random erasing as well. The shuffle does not depend on the
  augmentation, so the ids name the images of the augmented runs too.
"""
import os
import sys

import mindspore as ms
import numpy as np

from ms_vit import create_model, data, device

TINY = dict(num_classes=5, image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_dim=96,
            fused_kernels=False)
EPOCHS = 2


def tiny(**options):
    net = create_model("vit_ti_16_224", **TINY, **options)
    device.same_weights_as_rank0(net)
    return net


def images_out(split, config, rank, **recipe):
    """(epochs, images of an epoch, C, H, W): the pipeline's output images, epoch by epoch."""
    dataset = data.create_dataset(split, data.list_classes(split), config, 2, training=True, num_workers=2,
                                  num_shards=2, shard_id=rank, seed=42, **recipe)
    batches = dataset.create_tuple_iterator(num_epochs=EPOCHS, output_numpy=True)
    return np.stack([np.concatenate([images for images, _ in batches]) for _ in range(EPOCHS)])


def main(out, data_dir):
    setup = device.setup("CPU", "graph", seed=42, distribute=True)
    rank = setup.rank
    net = tiny(drop_rate=0.3, drop_path_rate=0.5)
    weights = np.concatenate([p.asnumpy().ravel() for p in net.get_parameters()])
    net.set_train(True)
    masks = net(ms.Tensor(np.ones((4, 3, 32, 32), np.float32))).asnumpy()

    split = os.path.join(data_dir, "train")
    sums = lambda images: images.reshape(images.shape[0], images.shape[1], -1).sum(-1)      # noqa: E731
    np.savez(os.path.join(out, f"rank{rank}.npz"), masks=masks, weights=weights,
             plain_ids=sums(images_out(split, net.config, rank, augment=False)),
             repeat_ids=sums(images_out(split, net.config, rank, augment=False, repeated_aug=2)),
             repeat_crops=images_out(split, net.config, rank, repeated_aug=2),
             repeat_deit=images_out(split, net.config, rank, repeated_aug=2, auto_augment="rand-m9-mstd0.5-inc1",
                                    re_prob=0.25))


if __name__ == "__main__":
    main(*sys.argv[1:3])
