import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
sys.path.insert(0, ROOT)


def shared_path(*parts):
    """A file of ../shared/ beside the project, or skip the test that needs it."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (reference material beside the project)")
    return path


@pytest.fixture(params=["graph", "pynative"])
def mode(request):
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture(scope="session")
def imagenet_sample(tmp_path_factory):
    """The 20 real ImageNet photos of the foolbox wheel in wnid folders, with a devkit archive built from the
    timm wheel's synset lists (dataset_tools.demo.build_imagenet_sample)."""
    from dataset_tools.demo import build_imagenet_sample
    root = str(tmp_path_factory.mktemp("data") / "imagenet_sample")
    build_imagenet_sample(root)
    return root
