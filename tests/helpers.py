"""Shared test helpers: running the entry scripts as a user would, and the built-in real-image datasets."""
import os
import subprocess
import sys

from conftest import ROOT

TINY_ARGS = ["--model", "vit_ti_16_224", "--image_size", "32", "--patch_size", "8", "--embed_dim", "48",
             "--depth", "2", "--num_heads", "3", "--mlp_dim", "96"]


def run_script(*args, cwd=ROOT, timeout=600):
    """Run ``python <args>`` in the project root; returns the CompletedProcess (text output)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_clean_error(result, *fragments):
    """Exit status 2, one ``error: ...`` line on stderr containing ``fragments``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
