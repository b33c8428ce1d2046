"""Run by tests/test_weights.py in a process of its own: small timm models with non-trivial random weights, written
as timm writes them (model.safetensors) with timm's own logits.

    python tests/timm_reference.py OUT

OUT/{vit,deit_distilled,deit3}.safetensors, OUT/<model>_logits.npy (evaluation mode) and OUT/timm_input.npy: a ViT,
DeiT's distilled model and DeiT III (LayerScale, position embedding without the class slot). Exits non-zero when
timm cannot be imported (pip install torch==2.13.0; pip install --no-deps timm==1.0.31).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import _torchvision_stub  # noqa: E402  (timm imports torchvision, which has no CPU build for this torch)

_torchvision_stub.install()
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def main(out):
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
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(out, f"{name}.safetensors"))
        np.save(os.path.join(out, f"{name}_logits.npy"), logits.numpy())


if __name__ == "__main__":
    main(sys.argv[1])
