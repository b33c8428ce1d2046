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


def download(url, dest, **env):
    """The server is plain http on 127.0.0.1: allowed as a local mirror is."""
    return run_script("-m", "dataset_tools", "download", "--url", url, "--dest", str(dest),
                      env=dict({"MS_VIT_ALLOW_HTTP_MIRROR": "1"}, **env))


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
    assert sorted(os.listdir(dest)) == [".ms_vit_dataset", "ILSVRC2012_devkit_t12.tar.gz", "infer", "train", "val"]
    assert os.listdir(tmp_path / "data") == ["subset"]                   # no staging folder left
    again = download(f"{base}/good.zip", dest)                            # its own dataset: replaced
    assert again.returncode == 0, again.stderr
    assert os.listdir(tmp_path / "data") == ["subset"]
    local = download((root / "good.zip").as_uri(), tmp_path / "from_file")    # file:// reads a local zip
    assert local.returncode == 0 and "train: 6 images in 2 classes" in local.stdout, local.stderr
    one_error_line(download(f"{base}/good.zip", tmp_path / "plain", MS_VIT_ALLOW_HTTP_MIRROR="0"),
                   "is plain http: ms_vit downloads over https only")


def test_broken_url(server, tmp_path):
    _, base = server
    result = download(f"{base}/missing.zip", tmp_path / "d")
    one_error_line(result, "cannot download")
    assert not os.listdir(tmp_path)


def test_not_a_zip(server, tmp_path):
    root, base = server
    (root / "page.zip").write_text("<html>not a zip</html>")
    result = download(f"{base}/page.zip", tmp_path / "d")
    one_error_line(result, "is not a readable zip file")
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
    assert sorted(os.listdir(tmp_path)) == ["mnist"]                      # no staging folder left
    assert (tmp_path / "mnist" / ".ms_vit_dataset").is_file()
    (tmp_path / "mnist" / "train" / "3" / "stale.jpg").write_bytes(b"")
    assert build_mnist(str(tmp_path / "mnist")) == counts                 # its own dataset: replaced whole
    assert not (tmp_path / "mnist" / "train" / "3" / "stale.jpg").exists()
    assert sorted(os.listdir(tmp_path)) == ["mnist"]


def test_a_zip_bomb_is_refused_before_unpacking(server, tmp_path):
    """50 MiB of zeros deflate to ~50 KB (a ratio of ~1,000): over MAX_EXPANSION (20x), refused from the sizes
    the zip declares, nothing unpacked."""
    from dataset_tools.download import MAX_EXPANSION
    root, base = server
    with zipfile.ZipFile(root / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dataset/train/a/zeros.jpg", bytes(50 << 20))
        zf.writestr("dataset/val/a/b.jpg", jpeg_bytes((0, 0, 0)))
    size = os.path.getsize(root / "bomb.zip")
    assert size * MAX_EXPANSION < 50 << 20
    result = download(f"{base}/bomb.zip", tmp_path / "d")
    one_error_line(result, f"more than {MAX_EXPANSION}x its size: refused")
    assert not os.listdir(tmp_path)


# (command and its arguments before --dest; the built-in ones read wheels, the others a zip or archives)
COMMANDS = {"demo": ["demo"], "imagenet-sample": ["imagenet-sample"],
            "download": ["download", "--url", "file:///nonexistent.zip"],
            "imagenet": ["imagenet", "--val", __file__, "--devkit", __file__]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_nothing_of_the_users_is_written_over_or_deleted(command, tmp_path):
    """A --dest that is a file, a link or a folder holding files the tools did not write: one line, nothing
    changed, nothing left beside it (the built-in ones used to delete the folder and leave DEST.partial/)."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    readme = tmp_path / "README.md"
    readme.write_text("keep me too")
    os.symlink(user, tmp_path / "link")
    before = sorted(os.listdir(tmp_path))
    for dest, expected in ((user, "already holds files dataset_tools did not write (notes.txt)"),
                           (readme, "is a file, not a folder"), (tmp_path / "link", "is a link, not a folder")):
        result = run_script("-m", "dataset_tools", *COMMANDS[command], "--dest", str(dest))
        one_error_line(result, f"--dest {dest} ")
        assert expected in result.stderr
        assert sorted(os.listdir(tmp_path)) == before and os.listdir(user) == ["notes.txt"]
        assert (user / "notes.txt").read_text() == "keep me" and readme.read_text() == "keep me too"
    help_text = run_script("-m", "dataset_tools", command, "--help").stdout
    assert ".ms_vit_dataset" in " ".join(help_text.split())


def test_bench_recipe_does_not_replace_a_folder_of_the_users(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "keep.txt").write_text("mine")
    result = run_script("benchmarks/bench_recipe.py", "--data_dir", str(tmp_path))
    one_error_line(result, "already holds files dataset_tools did not write (train)")
    assert (tmp_path / "train" / "keep.txt").read_text() == "mine" and os.listdir(tmp_path) == ["train"]
