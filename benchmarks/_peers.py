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
