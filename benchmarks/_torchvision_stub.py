"""Lets timm import without torchvision.

timm 1.0.31 imports torchvision at import time (transforms, datasets, FrozenBatchNorm2d), but its
VisionTransformer uses none of it, and PyPI has no CPU build of torchvision for this torch. This finder
answers every ``torchvision.*`` import with an empty stand-in module. Benchmarks only; never in ms_vit."""
import importlib.abc
import importlib.machinery
import sys
import types


class _StubClass(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _StubModule(types.ModuleType):
    __path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubClass(name, (), {"__init__": lambda self, *args, **kwargs: None})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def install():
    try:
        import torchvision  # noqa: F401  (a real one, if it works)
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _Finder())
