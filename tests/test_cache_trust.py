"""The cache is trusted only when it is the user's own: folders created 0700; a folder or file owned by another user
(made here for real: the tests run as root, so chown to nobody works), writable by its group or others, or a symbolic
link, is refused, for every cache: the kernel library (a planted one is never loaded), weights, compiled graphs, the
image check's records, the wheels."""
import logging
import os
import stat
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers import assert_clean_error, run_script

from ms_vit import files

NOBODY = 65534


@pytest.fixture
def cache(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("files owned by another user can only be made as root (the suite runs as root)")
    root = tmp_path / "cache"
    monkeypatch.setenv("MS_VIT_CACHE", str(root))
    return root


def test_cache_folders_are_created_private(cache, monkeypatch):
    monkeypatch.setenv("MS_VIT_CACHE", str(cache / "deeper" / "root"))
    folder = files.private_cache("weights", "some.name")
    assert folder == str(cache / "deeper" / "root" / "weights" / "some.name")
    for path in (cache / "deeper", cache / "deeper" / "root", cache / "deeper" / "root" / "weights", folder):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path


def other_owned(path):
    os.chown(path, NOBODY, NOBODY)


def mode(bits):
    return lambda path: os.chmod(path, bits)


def symlinked(path):
    real = str(path) + ".real"
    os.rename(path, real)
    os.symlink(real, path)


# (what is done to a folder or file of the cache, the fragment of the one-line refusal)
BREAKS = [(other_owned, "belongs to user nobody (uid 65534), not to you"),
          (mode(0o770), "can be written by its group (mode 770)"),
          (mode(0o703), "can be written by others (mode 703)"),
          (mode(0o777), "can be written by its group (mode 777)"),
          (symlinked, "is a symbolic link")]


@pytest.mark.parametrize("level", ["root", "subfolder", "file"])
@pytest.mark.parametrize("damage, expected", BREAKS)
def test_each_kind_of_foreign_cache_is_refused_in_one_line(cache, level, damage, expected):
    folder = files.private_cache("kernels")
    target = {"root": str(cache), "subfolder": folder, "file": os.path.join(folder, "x.so")}[level]
    with open(os.path.join(folder, "x.so"), "wb") as f:
        f.write(b"\x7fELF")
    os.chmod(os.path.join(folder, "x.so"), 0o600)
    files.check_private(os.path.join(folder, "x.so"))                         # the user's own: accepted
    damage(target)
    with pytest.raises(files.CacheError) as caught:
        files.private_cache("kernels")
        files.check_private(os.path.join(folder, "x.so"))
    message = str(caught.value)
    assert target in message and expected in message and "\n" not in message
    assert "set MS_VIT_CACHE to a folder of yours" in message


def test_a_file_where_a_folder_should_be(cache):
    os.makedirs(cache, mode=0o700)
    (cache / "graphs").write_text("")
    with pytest.raises(files.CacheError, match="is not a folder"):
        files.private_cache("graphs")


# --- the kernel library -------------------------------------------------------------------------------------------

PLANTED = r"""
#include <cstdio>
#include <cstdlib>
__attribute__((constructor)) static void planted() {      // runs at dlopen, as whoever loads the library
    FILE *f = std::fopen(std::getenv("PLANTED_MARKER"), "w");
    if (f) { std::fputs("the planted library ran", f); std::fclose(f); }
}
"""

RUN_MODEL = """
import sys
sys.path.insert(0, {root!r})
import numpy as np, mindspore as ms
from ms_vit import create_model
from ms_vit.models import kernels
net = create_model('vit_ti_16_224', image_size=32, patch_size=8, depth=1, num_classes=3)
print(kernels.compiled_library(), net.fused_kernels, net(ms.Tensor(np.ones((1, 3, 32, 32), np.float32))).shape)
"""


def library_path(env):
    code = f"import sys; sys.path.insert(0, {ROOT!r}); from ms_vit.models import kernels; print(kernels.library_path())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


def plant(tmp_path, env, damage):
    """A library whose constructor writes PLANTED_MARKER, at the path ms_vit would load, with a matching sha256
    record; then ``damage`` applied to (library path, kernels folder)."""
    import hashlib
    source = tmp_path / "planted.cc"
    source.write_text(PLANTED)
    target = library_path(env)
    folder = os.path.dirname(target)
    os.makedirs(folder, mode=0o700)
    os.chmod(env["MS_VIT_CACHE"], 0o700)
    subprocess.run(["g++", "-shared", "-fPIC", str(source), "-o", target], check=True)
    os.chmod(target, 0o700)
    with open(target + ".sha256", "w") as f:
        f.write(hashlib.sha256(open(target, "rb").read()).hexdigest() + "\n")
    damage(target, folder)
    return target


# (what makes the cache not the user's, whether the model then uses fused kernels (rebuilt) or MindSpore's)
PLANTINGS = [
    ("folder owned by another user", lambda lib, folder: os.chown(folder, NOBODY, NOBODY), False),
    ("library owned by another user", lambda lib, folder: os.chown(lib, NOBODY, NOBODY), False),
    ("record owned by another user", lambda lib, folder: os.chown(lib + ".sha256", NOBODY, NOBODY), False),
    ("folder writable by others", lambda lib, folder: os.chmod(folder, 0o777), False),
    ("library writable by its group", lambda lib, folder: os.chmod(lib, 0o770), False),
    ("library a symbolic link", lambda lib, folder: symlinked(lib), False),
    ("the user's own folder, the record not the library's",
     lambda lib, folder: open(lib + ".sha256", "w").write("0" * 64), True),
]


@pytest.mark.parametrize("case, damage, rebuilt", PLANTINGS, ids=[p[0] for p in PLANTINGS])
def test_a_planted_kernel_library_is_never_loaded(cache, tmp_path, case, damage, rebuilt):
    """Refused: one warning naming the path, the model runs on MindSpore's operators (nothing of the folder is
    loaded; the numbers are the same). In the user's own folder, a library that is not its recorded build is
    compiled again. Either way the planted library's constructor never runs."""
    marker = tmp_path / "planted-ran"
    env = dict(os.environ, MS_VIT_CACHE=str(cache), PLANTED_MARKER=str(marker))
    target = plant(tmp_path, env, damage)
    planted = open(os.path.realpath(target), "rb").read()
    run = subprocess.run([sys.executable, "-c", RUN_MODEL.format(root=ROOT)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not marker.exists(), f"{case}: the planted library was loaded"
    library, fused, shape = run.stdout.split(maxsplit=2)
    assert shape.strip() == "(1, 3)"
    if rebuilt:
        import hashlib
        built = open(target, "rb").read()
        assert (library, fused) == (target, "True") and built != planted               # compiled again
        assert open(target + ".sha256").read().strip() == hashlib.sha256(built).hexdigest()
    else:
        assert (library, fused) == ("None", "False")
        refusals = [line for line in run.stderr.splitlines() if "are not loaded from it" in line]
        assert len(refusals) == 1 and "ms_vit trusts only a cache of your own" in refusals[0], run.stderr[-2000:]


def test_the_compiled_library_is_recorded_and_checked(cache):
    """A fresh build records its sha256 beside it, 0700 library in a 0700 folder."""
    env = dict(os.environ, MS_VIT_CACHE=str(cache))
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from ms_vit.models import kernels; "
            "print(kernels.compiled_library())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    library = run.stdout.strip()
    assert os.path.isfile(library), run.stderr[-2000:]
    import hashlib
    assert open(library + ".sha256").read().strip() == hashlib.sha256(open(library, "rb").read()).hexdigest()
    assert stat.S_IMODE(os.stat(library).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.dirname(library)).st_mode) == 0o700


# --- weights, compiled graphs, the image check's records, wheels --------------------------------------------------

def test_planted_weights_with_a_matching_record_are_refused(cache):
    """A row without a published sha256 trusts its cached file by its record: only in the user's own folder."""
    import hashlib

    from ms_vit.weights import registry
    entry = registry.find("vit_b_16_224.mindvision")
    os.makedirs(os.path.dirname(entry.path), mode=0o700)
    os.chmod(cache, 0o700)
    os.chmod(os.path.dirname(os.path.dirname(entry.path)), 0o700)
    with open(entry.path, "wb") as f:
        f.write(b"planted weights")
    with open(entry.path + ".sha256", "w") as f:
        f.write(hashlib.sha256(b"planted weights").hexdigest() + "\n")
    os.chmod(entry.path, 0o644)
    os.chmod(entry.path + ".sha256", 0o644)
    assert registry.fetch(entry) == entry.path                  # the user's own record: used (trusted on first use)
    for damage, where, expected in ((other_owned, entry.path, "belongs to user nobody"),
                                    (mode(0o664), entry.path + ".sha256", "can be written by its group"),
                                    (other_owned, os.path.dirname(entry.path), "belongs to user nobody")):
        damage(where)
        with pytest.raises(registry.WeightsError) as caught:
            registry.fetch(entry)
        assert where in str(caught.value) and expected in str(caught.value)
        os.chown(where, 0, 0)
        os.chmod(where, 0o700 if os.path.isdir(where) else 0o644)
    result = run_script("-m", "ms_vit.weights", "download", entry.name, env={"MS_VIT_CACHE": str(cache)})
    assert result.returncode == 0
    other_owned(entry.path)
    assert_clean_error(run_script("-m", "ms_vit.weights", "download", entry.name, env={"MS_VIT_CACHE": str(cache)}),
                       f"the cache file {entry.path} belongs to user nobody")


def test_a_foreign_graph_cache_is_not_used(cache, caplog):
    from ms_vit import create_model
    from ms_vit.deploy import compile_cache
    net = create_model("vit_ti_16_224", image_size=32, patch_size=8, depth=1, num_classes=3, fused_kernels=False)
    folder = compile_cache.enable(net, 2)
    assert folder and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    planted = os.path.join(folder, "graph.mindir")
    with open(planted, "wb") as f:
        f.write(b"planted graph")
    other_owned(planted)
    with caplog.at_level(logging.WARNING, logger="ms_vit"):
        assert compile_cache.enable(net, 2) == ""
    assert f"the cache file {planted} belongs to user nobody" in caplog.text


def test_foreign_image_check_records_are_not_used(cache, tmp_path, caplog):
    from ms_vit.data.manifest import ScanManifest
    split = tmp_path / "train"
    split.mkdir()
    manifest = ScanManifest(str(split))
    manifest.record("cls", "digest", 3)
    manifest.save()
    assert ScanManifest(str(split)).passed("cls", "digest") == 3            # the user's own records: used
    other_owned(manifest.path)
    with caplog.at_level(logging.WARNING, logger="ms_vit"):
        reread = ScanManifest(str(split))
    assert reread.passed("cls", "digest") is None and "belongs to user nobody" in caplog.text
    reread.record("cls", "digest", 3)
    reread.save()                                                           # not written into either
    assert os.stat(manifest.path).st_uid == NOBODY


def test_a_foreign_wheel_cache_is_refused(cache):
    os.makedirs(cache / "wheels", mode=0o700)
    os.chmod(cache, 0o700)
    other_owned(cache / "wheels")
    result = run_script("-m", "dataset_tools", "demo", "--dest", str(cache.parent / "mnist"),
                        env={"MS_VIT_CACHE": str(cache)})
    assert_clean_error(result, f"the cache folder {cache / 'wheels'} belongs to user nobody")
    assert not os.path.exists(cache.parent / "mnist")
