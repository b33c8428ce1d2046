"""Shared test helpers: running the entry scripts as a user would, and the built-in real-image datasets."""
import os
import subprocess
import sys

from conftest import ROOT

TINY_ARGS = ["--model", "vit_ti_16_224", "--image_size", "32", "--patch_size", "8", "--embed_dim", "48",
             "--depth", "2", "--num_heads", "3", "--mlp_dim", "96"]


def run_script(*args, cwd=ROOT, timeout=600, env=None):
    """Run ``python <args>`` in the project root (``env``: variables added); returns the CompletedProcess (text
    output)."""
    env = dict(dict(os.environ, PYTHONPATH=ROOT), **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_clean_error(result, *fragments):
    """Exit status 2, one ``error: ...`` line on stderr containing ``fragments``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_msrun(script_args, log_dir, workers=2, timeout=300, env=None):
    """``msrun --worker_num=W --local_worker_num=W --master_port=PORT --log_dir=LOGS --join=True <script_args>`` as
    the README says: msrun starts its workers with the ``python`` on PATH, so this interpreter's bin/ goes first."""
    bin_dir = os.path.dirname(sys.executable)
    # MS_NODE_TIMEOUT: msrun's scheduler gives up on a worker that stopped without leaving the cluster (killed, or
    # killed by msrun after another failed) after 15 s instead of MindSpore's 30: the failure tests wait less
    env = dict(dict(os.environ, PYTHONPATH=ROOT, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
                    MS_NODE_TIMEOUT="15"), **(env or {}))
    command = [os.path.join(bin_dir, "msrun"), f"--worker_num={workers}", f"--local_worker_num={workers}",
               f"--master_port={free_port()}", f"--log_dir={log_dir}", "--join=True", *script_args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def worker_log(log_dir, rank):
    """What a worker printed, without MindSpore's own [INFO]/[WARNING] lines."""
    with open(os.path.join(log_dir, f"worker_{rank}.log")) as f:
        return "".join(line for line in f if not line.startswith("["))
