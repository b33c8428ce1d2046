import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ../shared/ beside the project (reference material); MS_VIT_SHARED names another place (a missing one: the tests
# run as in a clone without it)
SHARED = os.environ.get("MS_VIT_SHARED") or os.path.join(os.path.dirname(ROOT), "shared")
sys.path.insert(0, ROOT)
# timm architectures tests/timm_reference.py also writes with their real shapes (docs/weights.md pins one by name)
TIMM_ARCHS = ("deit_small_patch16_224",)


def shared_path(*parts):
    """A file of ../shared/ beside the project, or skip the test that needs it."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (reference material beside the project; {SHARED} is absent)")
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", f"shared: needs {SHARED} (reference material beside the project); deselected, "
                            "not skipped, where it is absent")


def pytest_report_header(config):
    if not os.path.isdir(SHARED):
        return f"{SHARED} is absent: the tests of its reference copies (marked 'shared') are deselected"


def pytest_collection_modifyitems(config, items):
    """Where ../shared is absent (a clone), its cases are left out of the run, said in the header and the summary
    (``N deselected``): every other test runs without it."""
    if os.path.isdir(SHARED):
        return
    left_out = [item for item in items if item.get_closest_marker("shared")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("shared")]


@pytest.fixture(scope="session")
def timm_reference(tmp_path_factory):
    """What tests/timm_reference.py writes (timm's own models, files and logits), made once per session in a process
    of its own: ``folder``, ``ready`` (timm importable) and ``error`` (its stderr otherwise)."""
    folder = tmp_path_factory.mktemp("timm_reference")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "timm_reference.py"), str(folder), *TIMM_ARCHS],
                         capture_output=True, text=True, cwd=ROOT)
    return types.SimpleNamespace(folder=folder, ready=run.returncode == 0, error=run.stderr[-2000:])


def require_timm(reference):
    """Skip the test when timm could not run (its reason); else the folder of its files."""
    if not reference.ready:
        pytest.skip(f"timm is not importable here (pip install torch==2.13.0; pip install --no-deps timm==1.0.31): "
                    f"{reference.error[-300:]}")
    return reference.folder


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
