"""Run in a process of its own by the tests (tests/conftest.py ``timm_reference``): timm models with seeded random
weights, written as timm writes them, with timm's own logits.

    python tests/timm_reference.py OUT [ARCH ...]

* OUT/{vit,deit_distilled,deit3}.safetensors, OUT/<model>_logits.npy (evaluation mode) and OUT/timm_input.npy: a
  small ViT, DeiT's distilled model and DeiT III (LayerScale, position embedding without the class slot)
  (tests/test_weights.py); OUT/vit_pytorch_model.bin: the small ViT as timm's older ``pytorch_model.bin`` files
  (``torch.save`` of the state dict).
* OUT/timm_vit_parity/: the timm parity fixture, in the format of ../shared/fixtures/timm_vit_parity
  (tests/test_convert.py): a VisionTransformer of 64 px, patch 16, dim 96, depth 3, 3 heads, 10 classes (timm's
  exact GELU and LayerNorm eps 1e-6) with non-trivial random weights: model.safetensors, input.npy (4 normalised
  images), logits.npy (timm's evaluation-mode output), config.json.
* OUT/timm_vit_base_patch16_224.keys.tsv: the state-dict keys and shapes of ``timm.create_model(
  "vit_base_patch16_224")`` (name<TAB>shape), the names inside timm's published ViT-B/16 files.
* OUT/<ARCH>.safetensors for each ARCH named: ``timm.create_model(ARCH)`` with its own (seeded) initialisation:
  a file of the published weight set's exact names and shapes, but not its values.

Exits non-zero when timm cannot be imported (pip install torch==2.13.0; pip install --no-deps timm==1.0.31).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import _torchvision_stub  # noqa: E402  (timm imports torchvision, which has no CPU build for this torch)

_torchvision_stub.install()
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

PARITY = dict(img_size=64, patch_size=16, embed_dim=96, depth=3, num_heads=3, mlp_ratio=4.0, num_classes=10,
              qkv_bias=True, class_token=True, global_pool="token")


def save_state(net, path):
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)


def small_models(out):
    torch.manual_seed(0)
    small = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5)
    models = {"vit": VisionTransformer(**small), "deit_distilled": VisionTransformerDistilled(**small),
              "deit3": VisionTransformer(no_embed_class=True, init_values=1e-6, **small)}
    x = torch.randn(2, 3, 32, 32)
    np.save(os.path.join(out, "timm_input.npy"), x.numpy())
    for name, net in models.items():
        with torch.no_grad():
            for param in net.parameters():
                param.copy_(torch.randn_like(param) * 0.2)
        net.eval()
        with torch.no_grad():
            logits = net(x)
        save_state(net, os.path.join(out, f"{name}.safetensors"))
        np.save(os.path.join(out, f"{name}_logits.npy"), logits.numpy())
    torch.save(models["vit"].state_dict(), os.path.join(out, "vit_pytorch_model.bin"))


def parity_fixture(folder):
    """Weights far from timm's initialisation (LayerNorm scales 1 + N(0, 0.1), tokens and position embedding
    N(0, 0.5), the rest N(0, 0.12)): activations of order 1, where the exact and the tanh GELU differ by ~1e-3."""
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(20240601)
    net = VisionTransformer(**PARITY)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name in ("cls_token", "pos_embed"):
                param.copy_(0.5 * torch.randn_like(param))
            else:
                param.copy_(0.12 * torch.randn_like(param))
    net.eval()
    x = torch.randn(4, 3, PARITY["img_size"], PARITY["img_size"])
    with torch.no_grad():
        logits = net(x)
    save_state(net, os.path.join(folder, "model.safetensors"))
    np.save(os.path.join(folder, "input.npy"), x.numpy())
    np.save(os.path.join(folder, "logits.npy"), logits.numpy())
    config = {"produced_by": f"timm {timm.__version__}, torch {torch.__version__} (tests/timm_reference.py)",
              "constructor": "timm.models.vision_transformer.VisionTransformer", "kwargs": PARITY,
              "numerics": {"gelu": "exact (erf)", "layer_norm_eps": net.norm.eps,
                           "attention_scale": "head_dim ** -0.5"},
              "files": {"model.safetensors": "state_dict, float32",
                        "input.npy": f"float32 {tuple(x.shape)}, already normalised",
                        "logits.npy": f"float32 {tuple(logits.shape)}, timm eval-mode output for input.npy"}}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def b16_keys(path):
    net = timm.create_model("vit_base_patch16_224", pretrained=False)
    with open(path, "w") as f:
        f.write(f"# state_dict keys and shapes of timm {timm.__version__} vit_base_patch16_224. name<TAB>shape\n")
        for name, value in net.state_dict().items():
            f.write(f"{name}\t{'x'.join(map(str, value.shape))}\n")


def main(out, archs):
    small_models(out)
    parity_fixture(os.path.join(out, "timm_vit_parity"))
    b16_keys(os.path.join(out, "timm_vit_base_patch16_224.keys.tsv"))
    for arch in archs:
        torch.manual_seed(0)
        save_state(timm.create_model(arch, pretrained=False), os.path.join(out, f"{arch}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
