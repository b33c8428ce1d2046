"""What a benchmark's peers (and optional packages) need: said in one line, before any work, when one is missing."""
import importlib.util
import sys

# module -> how to install it beside MindSpore 2.10 (numpy must stay below 2: a bare `pip install onnx` upgrades it)
INSTALL = {
    "torch": "pip install torch==2.13.0 (the CPU wheel on this machine)",
    "timm": "pip install --no-deps timm==1.0.31",
    "safetensors": "pip install safetensors",
    "onnx": 'pip install onnx "numpy<2"',
    "onnxruntime": 'pip install onnxruntime "numpy<2"',
    "mindcv": "pip install --no-deps mindcv==0.3.0",
}


def require(*modules: str) -> None:
    """Exit with one ``error:`` line naming the install of every module of ``modules`` that is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"error: this benchmark needs {', '.join(missing)}: " + "; ".join(INSTALL[m] for m in missing) +
                 " (or pip install -r requirements-dev.txt, then pip install --no-deps timm==1.0.31)")


def timm_step(name: str, batch: int, train: bool, recompute: bool = False):
    """One step of timm's ``name`` at ``batch`` 224 px images, as the benchmarks time it: the training step
    (label-smoothed cross-entropy, torch's AdamW; ``recompute``: timm's gradient checkpointing) or inference.
    Returns ``(step, torch)``."""
    import os
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _torchvision_stub
    _torchvision_stub.install()
    import timm
    import torch
    net = timm.create_model(name, num_classes=1000)
    net.set_grad_checkpointing(recompute)
    images = torch.randn(batch, 3, 224, 224)
    if train:
        labels = torch.randint(0, 1000, (batch,))
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)
        net.train()

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(images), labels).backward()
            optimizer.step()
    else:
        net.eval()

        def step():
            with torch.inference_mode():
                net(images)
    return step, torch
