"""dataset_tools: download against a real HTTP server on 127.0.0.1; the built-in datasets."""
import functools
import http.server
import io
import os
import threading
import zipfile

import pytest
from helpers import run_script
from PIL import Image

from dataset_tools.demo import build_mnist


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a folder of files the tests write."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def jpeg_bytes(color):
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buffer, "JPEG")
    return buffer.getvalue()


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def download(url, dest):
    return run_script("-m", "dataset_tools", "download", "--url", url, "--dest", str(dest))


def one_error_line(result, fragment):
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_download_unpacks_and_reports(server, tmp_path):
    root, base = server
    members = {f"dataset/{split}/{cls}/{i}.jpg": jpeg_bytes((i * 40, 0, 0))
               for split, n in (("train", 3), ("val", 2), ("infer", 1)) for cls in ("n01440764", "n01443537")
               for i in range(n)}
    members["dataset/ILSVRC2012_devkit_t12.tar.gz"] = b""
    write_zip(root / "good.zip", members)
    dest = tmp_path / "data" / "subset"
    result = download(f"{base}/good.zip", dest)
    assert result.returncode == 0, result.stderr
    assert "train: 6 images in 2 classes" in result.stdout and "val: 4 images in 2 classes" in result.stdout
    assert "infer: 2 images in 2 classes" in result.stdout
    assert sorted(os.listdir(dest)) == ["ILSVRC2012_devkit_t12.tar.gz", "infer", "train", "val"]
    assert os.listdir(tmp_path / "data") == ["subset"]                   # no staging folder left
    again = download(f"{base}/good.zip", dest)
    one_error_line(again, "exists and is not empty")


def test_broken_url(server, tmp_path):
    _, base = server
    result = download(f"{base}/missing.zip", tmp_path / "d")
    one_error_line(result, "cannot download")
    assert not os.listdir(tmp_path)


def test_not_a_zip(server, tmp_path):
    root, base = server
    (root / "page.zip").write_text("<html>not a zip</html>")
    result = download(f"{base}/page.zip", tmp_path / "d")
    one_error_line(result, "is not a zip file")
    assert not os.listdir(tmp_path)


def test_zip_with_wrong_layout(server, tmp_path):
    root, base = server
    write_zip(root / "flat.zip", {"images/a.jpg": jpeg_bytes((0, 0, 0)), "readme.txt": b"hi"})
    result = download(f"{base}/flat.zip", tmp_path / "d")
    one_error_line(result, "does not hold an ImageNet-style dataset")
    assert not os.listdir(tmp_path)


def test_mnist_demo_dataset(tmp_path):
    counts = build_mnist(str(tmp_path / "mnist"))
    assert counts == {"train": 4000, "val": 800, "infer": 200}
    for split, n in counts.items():
        folders = sorted(os.listdir(tmp_path / "mnist" / split))
        assert folders == [str(d) for d in range(10)]
        assert sum(len(os.listdir(tmp_path / "mnist" / split / d)) for d in folders) == n
    image = Image.open(next((tmp_path / "mnist" / "val" / "3").iterdir()))
    assert image.size == (28, 28) and image.mode == "L"
    assert not (tmp_path / "mnist.partial").exists()
