"""pip install . : a wheel of ms_vit, installed into a fresh virtual environment, works from outside the checkout
(create_model and a forward pass on the fused CPU kernels built from the packaged sources; the weights table).

The fresh environment sees this one's packages through a .pth file naming a folder of links to them, so that
MindSpore (2.5 GB) is not installed twice: pip still checks every dependency of the wheel, with no package index to
fall back on. The links leave out an ms_vit installed here (``pip install .`` beside the checkout, as the README
suggests): pip would find it already installed and not install the wheel."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

from conftest import ROOT

PROBE = """
import numpy as np, mindspore as ms, ms_vit
from ms_vit import create_model
from ms_vit.weights import registry
net = create_model("vit_ti_16_224", num_classes=3, image_size=32, patch_size=8, depth=1)
net.set_train(False)
print(net(ms.Tensor(np.zeros((2, 3, 32, 32), np.float32))).shape, net.fused_kernels, ms_vit.__file__,
      len(registry.registry()))
"""


def packages_without_ms_vit(folder):
    """Links to this environment's installed packages, but not to an ms_vit (its package, dist-info, editable
    finder), in ``folder``."""
    os.makedirs(folder)
    for site_dir in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for name in os.listdir(site_dir):
            link = os.path.join(folder, name)
            if "ms_vit" not in name.replace("-", "_").lower() and not os.path.lexists(link):
                os.symlink(os.path.join(site_dir, name), link)
    return folder


def test_wheel_installs_into_a_fresh_environment_and_runs_outside_the_checkout(tmp_path):
    source = tmp_path / "source"                    # a copy: building writes build/ and *.egg-info beside the code
    generated = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "dist")

    def ignore(folder, names):               # the checkout's own data/ and outputs/, not ms_vit/data
        top = {"outputs", "data"} & set(names) if os.path.samefile(folder, ROOT) else set()
        return generated(folder, names) | top
    shutil.copytree(ROOT, source, ignore=ignore)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheel = glob.glob(str(tmp_path / "dist" / "ms_vit-*.whl"))[0]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "outer_environment.pth"), "w") as f:
        f.write(packages_without_ms_vit(str(tmp_path / "outer")) + "\n")
    install = subprocess.run([python, "-m", "pip", "install", "--no-index", wheel], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MS_VIT_CACHE"] = str(tmp_path / "cache")
    run = subprocess.run([python, "-c", PROBE], cwd=str(tmp_path), capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    shape, fused, location, names = run.stdout.split(")")[0] + ")", *run.stdout.split(")")[1].split()
    assert shape == "(2, 3)" and fused == "True" and int(names) > 70
    assert location.startswith(site) and not location.startswith(ROOT)
