"""Pretrained weights by name (ms_vit.weights) in every layout ms_vit.weights.convert knows, offline: a 127.0.0.1 HTTP
server
serves small weights made here in each publisher's format, at the publishers' own paths; the mirrors' environment
variables point the hosts at it, and MS_VIT_WEIGHTS_TABLE adds rows for these small weights (the real rows' files are
hundreds of MB and, where a sha256 is published, cannot be made here).

References: timm's own logits for timm's layouts (timm run in a subprocess: tests/timm_reference.py); a numpy forward
pass with the source's numerics (GELU, LayerNorm eps) for the others, from the weights as the test wrote them in the
publisher's names (not through ms_vit's name tables)."""
import hashlib
import http.server
import os
import subprocess
import sys
import threading

import crafted_ckpt
import numpy as np
import pytest
from bounds import assert_beyond, assert_within, parameters, vit_forward
from conftest import ROOT, require_timm
from helpers import assert_clean_error, run_script
from scipy.special import erf

DIM, DEPTH, HEADS, MLP, PATCH, SIZE, CLASSES = 128, 2, 2, 256, 8, 32, 1000       # head dim 64: heads = dim / 64
GRID = SIZE // PATCH
MINDSPORE, TIMM_HOST = "https://download.mindspore.cn", "https://huggingface.co"
GOOGLE, PYTORCH = "https://storage.googleapis.com", "https://download.pytorch.org"


# --- the reference network: canonical weights and a numpy forward pass ---------------------------------------------

def canonical(seed=0):
    rng = np.random.default_rng(seed)
    r = lambda *shape, s=0.1: (rng.standard_normal(shape) * s).astype(np.float32)      # noqa: E731
    blocks = [dict(ln1_g=1 + r(DIM), ln1_b=r(DIM), q_w=r(DIM, DIM), q_b=r(DIM), k_w=r(DIM, DIM), k_b=r(DIM),
                   v_w=r(DIM, DIM), v_b=r(DIM), out_w=r(DIM, DIM), out_b=r(DIM), ln2_g=1 + r(DIM), ln2_b=r(DIM),
                   fc1_w=r(MLP, DIM), fc1_b=r(MLP), fc2_w=r(DIM, MLP), fc2_b=r(DIM)) for _ in range(DEPTH)]
    return dict(cls=r(1, 1, DIM), pos=r(1, 1 + GRID * GRID, DIM), patch_w=r(DIM, 3, PATCH, PATCH), patch_b=r(DIM),
                blocks=blocks, norm_g=1 + r(DIM), norm_b=r(DIM), head_w=r(CLASSES, DIM), head_b=r(CLASSES))


def reference_logits(c, x, tanh_gelu, eps):
    """The ViT's forward pass in float64 numpy: the paper's pre-norm encoder, class-token head."""
    def ln(h, g, b):
        mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return (h - mean) / np.sqrt(var + eps) * g + b

    def gelu(h):
        if tanh_gelu:
            return 0.5 * h * (1 + np.tanh(0.7978845608028654 * (h + 0.044715 * h ** 3)))
        return 0.5 * h * (1 + erf(h / np.sqrt(2)))

    b = x.shape[0]
    patches = x.reshape(b, 3, GRID, PATCH, GRID, PATCH).transpose(0, 2, 4, 1, 3, 5).reshape(b, GRID * GRID, -1)
    h = patches @ c["patch_w"].reshape(DIM, -1).T + c["patch_b"]
    h = np.concatenate([np.repeat(c["cls"], b, 0), h], 1) + c["pos"]
    for k in c["blocks"]:
        a = ln(h, k["ln1_g"], k["ln1_b"])
        q, kk, v = ((a @ k[f"{p}_w"].T + k[f"{p}_b"]).reshape(b, -1, HEADS, DIM // HEADS).transpose(0, 2, 1, 3)
                    for p in "qkv")
        s = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(DIM // HEADS)
        s = np.exp(s - s.max(-1, keepdims=True))
        o = ((s / s.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, -1, DIM)
        h = h + o @ k["out_w"].T + k["out_b"]
        a = ln(h, k["ln2_g"], k["ln2_b"])
        h = h + gelu(a @ k["fc1_w"].T + k["fc1_b"]) @ k["fc2_w"].T + k["fc2_b"]
    return ln(h, c["norm_g"], c["norm_b"])[:, 0] @ c["head_w"].T + c["head_b"]


# --- the same weights in each publisher's names -----------------------------------------------------------------

def qkv(k, part):
    return np.concatenate([k[f"{p}_{part}"] for p in "qkv"])


def tutorial_names(c, prefix="", cls="cls", head="dense"):
    """The MindSpore ViT tutorial's network; under MindSpore Vision's / old mindcv's classifier with a prefix."""
    out = {prefix + cls: c["cls"], prefix + "pos_embedding": c["pos"], prefix + "patch_embedding.conv.weight":
           c["patch_w"], prefix + "patch_embedding.conv.bias": c["patch_b"], prefix + "norm.gamma": c["norm_g"],
           prefix + "norm.beta": c["norm_b"], f"{head}.weight": c["head_w"], f"{head}.bias": c["head_b"]}
    for i, k in enumerate(c["blocks"]):
        p = f"{prefix}transformer.layers.{i}."
        out.update({p + "0.cell.0.gamma": k["ln1_g"], p + "0.cell.0.beta": k["ln1_b"],
                    p + "0.cell.1.qkv.weight": qkv(k, "w"), p + "0.cell.1.qkv.bias": qkv(k, "b"),
                    p + "0.cell.1.out.weight": k["out_w"], p + "0.cell.1.out.bias": k["out_b"],
                    p + "1.cell.0.gamma": k["ln2_g"], p + "1.cell.0.beta": k["ln2_b"],
                    p + "1.cell.1.dense1.weight": k["fc1_w"], p + "1.cell.1.dense1.bias": k["fc1_b"],
                    p + "1.cell.1.dense2.weight": k["fc2_w"], p + "1.cell.1.dense2.bias": k["fc2_b"]})
    return out


def mindcv_names(c):
    """mindcv 0.3.0 and later: timm's names, LayerNorms as gamma/beta."""
    out = {"cls_token": c["cls"], "pos_embed": c["pos"], "patch_embed.proj.weight": c["patch_w"],
           "patch_embed.proj.bias": c["patch_b"], "norm.gamma": c["norm_g"], "norm.beta": c["norm_b"],
           "head.weight": c["head_w"], "head.bias": c["head_b"]}
    for i, k in enumerate(c["blocks"]):
        p = f"blocks.{i}."
        out.update({p + "norm1.gamma": k["ln1_g"], p + "norm1.beta": k["ln1_b"], p + "attn.qkv.weight": qkv(k, "w"),
                    p + "attn.qkv.bias": qkv(k, "b"), p + "attn.proj.weight": k["out_w"],
                    p + "attn.proj.bias": k["out_b"], p + "norm2.gamma": k["ln2_g"], p + "norm2.beta": k["ln2_b"],
                    p + "mlp.fc1.weight": k["fc1_w"], p + "mlp.fc1.bias": k["fc1_b"], p + "mlp.fc2.weight": k["fc2_w"],
                    p + "mlp.fc2.bias": k["fc2_b"]})
    return out


def model_zoo_names(c):
    """The model zoo's official/cv/VIT: a Dense stem over (C, P, P) patch rows, to_q/to_k/to_v/to_out, a
    1001-class head whose last row is unused."""
    rng = np.random.default_rng(9)
    out = {"cls": c["cls"], "pos_embedding": c["pos"], "stem.patch_to_embedding.dense.weight":
           c["patch_w"].reshape(DIM, -1), "stem.patch_to_embedding.dense.bias": c["patch_b"],
           "norm.gamma": c["norm_g"], "norm.beta": c["norm_b"],
           "head.0.weight": np.concatenate([c["head_w"], rng.standard_normal((1, DIM)).astype(np.float32)]),
           "head.0.bias": np.concatenate([c["head_b"], np.float32([5.0])])}
    for i, k in enumerate(c["blocks"]):
        p = f"body.layers.{i}."
        out.update({p + "0.cell.0.gamma": k["ln1_g"], p + "0.cell.0.beta": k["ln1_b"],
                    p + "1.cell.0.gamma": k["ln2_g"], p + "1.cell.0.beta": k["ln2_b"],
                    p + "0.cell.1.to_out.weight": k["out_w"], p + "0.cell.1.to_out.bias": k["out_b"],
                    p + "1.cell.1.ff1.dense.weight": k["fc1_w"], p + "1.cell.1.ff1.dense.bias": k["fc1_b"],
                    p + "1.cell.1.ff2.dense.weight": k["fc2_w"], p + "1.cell.1.ff2.dense.bias": k["fc2_b"]})
        for part in "qkv":
            out[p + f"0.cell.1.to_{part}.weight"], out[p + f"0.cell.1.to_{part}.bias"] = k[f"{part}_w"], k[f"{part}_b"]
    return out


def torchvision_names(c):
    out = {"class_token": c["cls"], "conv_proj.weight": c["patch_w"], "conv_proj.bias": c["patch_b"],
           "encoder.pos_embedding": c["pos"], "encoder.ln.weight": c["norm_g"], "encoder.ln.bias": c["norm_b"],
           "heads.head.weight": c["head_w"], "heads.head.bias": c["head_b"]}
    for i, k in enumerate(c["blocks"]):
        p = f"encoder.layers.encoder_layer_{i}."
        out.update({p + "ln_1.weight": k["ln1_g"], p + "ln_1.bias": k["ln1_b"],
                    p + "self_attention.in_proj_weight": qkv(k, "w"), p + "self_attention.in_proj_bias": qkv(k, "b"),
                    p + "self_attention.out_proj.weight": k["out_w"], p + "self_attention.out_proj.bias": k["out_b"],
                    p + "ln_2.weight": k["ln2_g"], p + "ln_2.bias": k["ln2_b"], p + "mlp.linear_1.weight": k["fc1_w"],
                    p + "mlp.linear_1.bias": k["fc1_b"], p + "mlp.3.weight": k["fc2_w"], p + "mlp.3.bias": k["fc2_b"]})
    return out


def jax_names(c):
    """google-research/vision_transformer: Flax kernels (in, out), attention kernels (D, H, d) / (H, d, D)."""
    d = DIM // HEADS
    out = {"cls": c["cls"], "Transformer/posembed_input/pos_embedding": c["pos"],
           "embedding/kernel": c["patch_w"].transpose(2, 3, 1, 0), "embedding/bias": c["patch_b"],
           "Transformer/encoder_norm/scale": c["norm_g"], "Transformer/encoder_norm/bias": c["norm_b"],
           "head/kernel": c["head_w"].T, "head/bias": c["head_b"]}
    for i, k in enumerate(c["blocks"]):
        p, a = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        out.update({p + "LayerNorm_0/scale": k["ln1_g"], p + "LayerNorm_0/bias": k["ln1_b"],
                    p + "LayerNorm_2/scale": k["ln2_g"], p + "LayerNorm_2/bias": k["ln2_b"],
                    a + "out/kernel": k["out_w"].T.reshape(HEADS, d, DIM), a + "out/bias": k["out_b"],
                    p + "MlpBlock_3/Dense_0/kernel": k["fc1_w"].T, p + "MlpBlock_3/Dense_0/bias": k["fc1_b"],
                    p + "MlpBlock_3/Dense_1/kernel": k["fc2_w"].T, p + "MlpBlock_3/Dense_1/bias": k["fc2_b"]})
        for part, short in (("query", "q"), ("key", "k"), ("value", "v")):
            out[a + part + "/kernel"] = k[f"{short}_w"].T.reshape(DIM, HEADS, d)
            out[a + part + "/bias"] = k[f"{short}_b"].reshape(HEADS, d)
    return out


TRAINING_STATE = {"global_step": np.array([1000], np.int32), "learning_rate": np.array([1e-3], np.float32)}


def write_ckpt(path, tensors, with_state=True):
    import mindspore as ms
    items = dict(tensors, **(TRAINING_STATE if with_state else {}))
    if with_state:                                             # Adam moments of a training checkpoint
        items.update({f"adam_m.{k}": np.zeros_like(v) for k, v in list(tensors.items())[:3]})
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in items.items()], str(path))


def write_pth(path, tensors):
    """A PyTorch file, written by torch in a subprocess (torch and MindSpore are not imported together)."""
    npz = str(path) + ".npz"
    np.savez(npz, **tensors)
    code = ("import sys, numpy as np, torch; d = np.load(sys.argv[1]); "
            "torch.save({k: torch.from_numpy(d[k]) for k in d.files}, sys.argv[2])")
    run = subprocess.run([sys.executable, "-c", code, npz, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    os.remove(npz)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --- the server and the table ------------------------------------------------------------------------------------

class Server:
    """Files by URL path, on 127.0.0.1; ``hits`` counts the requests per path; paths in ``cut`` send half their
    bytes after announcing them all, then close."""

    def __init__(self):
        self.files, self.hits, self.cut = {}, {}, set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body[:len(body) // 2] if self.path in server.cut else body)
                except (BrokenPipeError, ConnectionResetError):   # a client that only wanted the headers
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, url, path):
        """Serve the file at ``path`` where ``url`` (on a real host) points once the mirrors are set."""
        self.files["/" + url.split("/", 3)[3]] = open(path, "rb").read()


def table_row(name, source, url, layout="auto", preprocess="imagenet", crop="", sha="", variant="vit_test_32",
              size=SIZE):
    return "\t".join([name, source, variant, str(size), layout, preprocess, str(crop), "", "", url, sha, "test"])


@pytest.fixture(scope="module")
def published(tmp_path_factory, timm_reference):
    """The small weights in every layout, served; the table rows naming them; what each should compute."""
    folder = tmp_path_factory.mktemp("published")
    server = Server()
    c = canonical()
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    mindspore_numerics, torch_numerics, flax_numerics = (True, 1e-7), (False, 1e-6), (True, 1e-6)
    rows, expected, other_gelu = [], {}, {}

    def publish(name, source, url, file, numerics, **row):
        server.publish(url, file)
        row.setdefault("sha", sha256(file))                 # pinned, as the real rows with a published sha256
        rows.append(table_row(name, source, url, **row))
        expected[name] = reference_logits(c, x.astype(np.float64), *numerics)
        other_gelu[name] = reference_logits(c, x.astype(np.float64), not numerics[0], numerics[1])

    write_ckpt(folder / "flat.ckpt", tutorial_names(c), with_state=False)
    publish("vit_test_32.mindvision_flat", "mindvision", f"{MINDSPORE}/vision/classification/vit_test_32.ckpt",
            folder / "flat.ckpt", mindspore_numerics, preprocess="mindspore")
    write_ckpt(folder / "mindvision.ckpt", tutorial_names(c, "backbone.", "cls_token", "head.dense"))
    publish("vit_test_32.mindvision", "mindvision", f"{MINDSPORE}/vision/classification/vit_test_32_mv.ckpt",
            folder / "mindvision.ckpt", mindspore_numerics, preprocess="mindspore")
    for name, tensors in (("mindcv_v0_2", tutorial_names(c, "backbone.", "cls_token", "head.classifier")),
                          ("mindcv", mindcv_names(c))):
        path = folder / f"{name}.ckpt"
        write_ckpt(path, tensors)
        publish(f"vit_test_32.{name}", "mindcv", f"{MINDSPORE}/toolkits/mindcv/vit/vit_test_32_{name}-"
                f"{sha256(path)[:8]}.ckpt", path, mindspore_numerics, layout=name)
    # a row as the real mindcv rows: no sha256 published, only the 8 hex digits in its file name (not enough)
    publish("vit_test_32.unpinned", "mindcv", f"{MINDSPORE}/toolkits/mindcv/vit/vit_test_32_unpinned-"
            f"{sha256(folder / 'mindcv.ckpt')[:8]}.ckpt", folder / "mindcv.ckpt", mindspore_numerics, layout="mindcv",
            sha="")
    write_ckpt(folder / "zoo.ckpt", model_zoo_names(c))
    publish("vit_test_32.model_zoo", "model_zoo", f"{MINDSPORE}/models/r1.7/vit_test_32_acc00.00.ckpt",
            folder / "zoo.ckpt", mindspore_numerics, layout="model_zoo", preprocess="mindspore",
            sha=sha256(folder / "zoo.ckpt"))
    np.savez(folder / "jax.npz", **jax_names(c))
    publish("vit_test_32.jax", "jax", f"{GOOGLE}/vit_models/test/ViT-test_32.npz", folder / "jax.npz",
            flax_numerics, layout="jax", preprocess="jax")
    write_pth(folder / "tv.pth", torchvision_names(c))
    publish("vit_test_32.torchvision", "torchvision", f"{PYTORCH}/models/vit_test_32-{sha256(folder / 'tv.pth')[:8]}"
            ".pth", folder / "tv.pth", torch_numerics, layout="torchvision", preprocess="torchvision")
    # timm's layouts: timm writes them and computes their logits (tests/timm_reference.py, its own process)
    timm = timm_reference.folder
    if timm_reference.ready:
        for model in ("vit", "deit_distilled", "deit3"):
            url = f"{TIMM_HOST}/timm/{model}_test.fb_in1k/resolve/main/model.safetensors"
            server.publish(url, timm / f"{model}.safetensors")
            rows.append(table_row(f"{model}_test.fb_in1k", "timm", url, layout="timm",
                                  sha=sha256(timm / f"{model}.safetensors")))
            expected[f"{model}_test.fb_in1k"] = np.load(timm / f"{model}_logits.npy")
    table = folder / "table.tsv"
    header = "name\tsource\tvariant\timage_size\tlayout\tpreprocess\tcrop_pct\ttop1\ttop5\turl\tsha256\tlicence"
    table.write_text("# small weights for tests/test_weights.py\n" + header + "\n" + "\n".join(rows) + "\n")
    return dict(server=server, table=str(table), x=x, expected=expected, other_gelu=other_gelu,
                timm_x=np.load(timm / "timm_input.npy") if timm_reference.ready else None, folder=folder)


@pytest.fixture
def offline_env(published, tmp_path, monkeypatch):
    """A fresh cache, the hosts pointed at the test server, the small weights' table."""
    env = {"MS_VIT_CACHE": str(tmp_path / "cache"), "MS_VIT_WEIGHTS_TABLE": published["table"],
           "MS_VIT_ALLOW_HTTP_MIRROR": "1",
           "HF_ENDPOINT": published["server"].url, "MS_VIT_MINDSPORE_MIRROR": published["server"].url,
           "MS_VIT_GOOGLE_MIRROR": published["server"].url, "MS_VIT_PYTORCH_MIRROR": published["server"].url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


NON_TIMM = ["vit_test_32.mindvision_flat", "vit_test_32.mindvision", "vit_test_32.mindcv_v0_2", "vit_test_32.mindcv",
            "vit_test_32.model_zoo", "vit_test_32.jax", "vit_test_32.torchvision"]
NUMERICS = {"mindvision_flat": (True, 1e-7), "mindvision": (True, 1e-7), "mindcv_v0_2": (True, 1e-7),
            "mindcv": (True, 1e-7), "model_zoo": (True, 1e-7), "jax": (True, 1e-6), "torchvision": (False, 1e-6)}


@pytest.mark.parametrize("name", NON_TIMM)
def test_each_layout_downloads_verifies_and_gives_the_reference_logits(published, offline_env, name):
    import mindspore as ms

    from ms_vit import create_model
    from ms_vit.weights import registry
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model(name, pretrained=True)
    net.set_train(False)
    got = net(ms.Tensor(published["x"])).asnumpy()
    bound = vit_forward(net.config, parameters(net), published["x"])[1]        # one float32 evaluation's
    assert_within(got, published["expected"][name], bound, "logits vs float64")
    assert_beyond(got, published["other_gelu"][name], bound, "the other GELU's logits")  # the numerics matter
    assert (net.config.gelu_approximate, net.config.layer_norm_eps) == NUMERICS[name.split(".")[1]]
    entry = registry.find(name)
    assert os.path.isfile(entry.path) and open(entry.path + ".sha256").read().strip() == sha256(entry.path)
    assert not [p for p in os.listdir(os.path.dirname(entry.path)) if p.startswith(".download")]


@pytest.mark.parametrize("model", ["vit", "deit_distilled", "deit3"])
def test_timm_layouts_give_timms_logits(published, offline_env, timm_reference, model):
    """timm's ViT, DeiT's distilled model (distillation token and head, averaged) and DeiT III (LayerScale, position
    embedding without the class slot): timm's own logits."""
    require_timm(timm_reference)
    import mindspore as ms

    from ms_vit import create_model
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model(f"{model}_test.fb_in1k", pretrained=True)
    net.set_train(False)
    got = net(ms.Tensor(published["timm_x"])).asnumpy()
    bound = 2 * vit_forward(net.config, parameters(net), published["timm_x"])[1]     # timm's float32 and ours
    assert_within(got, published["expected"][f"{model}_test.fb_in1k"], bound, "logits vs timm's")
    assert net.config.distilled == (model == "deit_distilled")
    assert (net.config.layer_scale_init is not None) == net.config.no_embed_class == (model == "deit3")


def test_second_use_reads_the_cache_not_the_server(published, offline_env):
    from ms_vit import create_model
    from ms_vit.weights import registry
    name = "vit_test_32.mindcv"
    path = "/" + registry.find(name).url.split("/", 3)[3]
    before = published["server"].hits.get(path, 0)
    create_model(name, pretrained=True)
    after_first = published["server"].hits.get(path, 0)
    create_model(name, pretrained=True)
    assert published["server"].hits.get(path, 0) == after_first > before


def cache_is_empty(env):
    cache = os.path.join(env["MS_VIT_CACHE"], "weights")
    return not os.path.isdir(cache) or all(not files for _, _, files in os.walk(cache))


def fetch(*names, env):
    return run_script("-m", "ms_vit.weights", "download", *names, env=env)


def test_a_cut_download_is_named_and_removed(published, offline_env):
    from ms_vit.weights import registry
    entry = registry.find("vit_test_32.mindcv_v0_2")
    path = "/" + entry.url.split("/", 3)[3]
    published["server"].cut.add(path)
    try:
        result = fetch(entry.name, env=offline_env)
    finally:
        published["server"].cut.discard(path)
    assert_clean_error(result, f"the download of {entry.name} from {published['server'].url}", "removed")
    assert cache_is_empty(offline_env)


def test_a_wrong_checksum_is_named_and_nothing_is_cached(published, offline_env):
    """The real model zoo row publishes its sha256; a file that is not that one is refused."""
    from ms_vit.weights import registry
    real = registry.find("vit_b_32_224.model_zoo")
    published["server"].publish(real.url, published["folder"] / "zoo.ckpt")
    result = fetch(real.name, env=offline_env)
    assert_clean_error(result, "is damaged or not the published file: sha256 ", f"published {real.sha256}",
                       f"place the right file at {real.path}")
    assert cache_is_empty(offline_env)


def test_a_hostile_mirror_cannot_crash_the_download_check(published, offline_env):
    """The 7 mindvision rows publish no sha256: the download check reads the file. A mirror serving a crafted
    checkpoint (a bfloat16 entry, then Float32 dims [1] holding 1 MiB: heap corruption, rc 134, when such a file went
    to MindSpore's loader) is refused in one line, and nothing is cached."""
    from ms_vit.weights import registry
    entry = registry.find("vit_l_32_224.mindvision")
    assert not entry.sha256 and not entry.hash_prefix
    crafted = published["folder"] / "crafted.ckpt"
    crafted.write_bytes(crafted_ckpt.value("scale", [2], "BFloat16", bytes(4)) +
                        crafted_ckpt.value("backbone.cls_token", [1], "Float32", bytes(1 << 20)))
    published["server"].publish(entry.url, crafted)
    try:                                                                            # its row has no sha256
        result = fetch(entry.name, env=dict(offline_env, MS_VIT_TRUST_ON_FIRST_USE="1"))
    finally:
        published["server"].files.pop("/" + entry.url.split("/", 3)[3])
    assert_clean_error(result, f"the download of {entry.name} from {published['server'].url}",
                       "is damaged or not the published file: cannot read checkpoint the file: ",
                       "needs 4 bytes; it holds 1,048,576")
    assert cache_is_empty(offline_env)


def test_404_and_offline_say_where_to_put_the_file(published, offline_env):
    from ms_vit.weights import registry
    entry = registry.find("vit_b_16_224.mindvision")
    offline_env = dict(offline_env, MS_VIT_TRUST_ON_FIRST_USE="1")                  # its row has no sha256
    result = fetch(entry.name, env=offline_env)
    assert_clean_error(result, f"cannot download vit_b_16_224.mindvision from {published['server'].url}"
                       "/vision/classification/vit_b_16_224.ckpt (HTTP 404", f"place it at {entry.path}",
                       "MS_VIT_MINDSPORE_MIRROR")
    offline = dict(offline_env, MS_VIT_MINDSPORE_MIRROR="http://127.0.0.1:9")          # nothing listens there
    result = fetch(entry.name, env=offline)
    assert_clean_error(result, "cannot download vit_b_16_224.mindvision", "Connection refused",
                       f"place it at {entry.path}")
    assert cache_is_empty(offline_env)


def test_a_row_without_sha256_is_refused_unless_pinned_or_trusted_on_first_use(published, offline_env):
    """Refused before anything is downloaded (the file name's 8 hex digits are not enough); pinned by the user with
    NAME@sha256:<hex> (a wrong pin refuses the file); trusted on first use when asked, the sha256 printed; once
    recorded, later uses need neither."""
    from ms_vit.weights import registry
    name, right = "vit_test_32.unpinned", sha256(published["folder"] / "mindcv.ckpt")
    entry = registry.find(name)
    path = "/" + entry.url.split("/", 3)[3]
    before = published["server"].hits.get(path, 0)
    refused = fetch(name, env=offline_env)
    assert_clean_error(refused, f"{name} has no published sha256", f"{name}@sha256:<64 hex digits>",
                       "MS_VIT_TRUST_ON_FIRST_USE=1")
    assert published["server"].hits.get(path, 0) == before and cache_is_empty(offline_env)
    with pytest.raises(registry.WeightsError, match="has no published sha256"):
        registry.fetch(entry)
    wrong = "0" * 64
    assert_clean_error(fetch(f"{name}@sha256:{wrong}", env=offline_env), f"sha256 {right}, published {wrong}")
    assert cache_is_empty(offline_env)
    for bad in (f"{name}@sha256:{right[:60]}", f"{name}@md5:{right}"):
        assert_clean_error(fetch(bad, env=offline_env), "pin a weight set as NAME@sha256:")
    pinned = fetch(f"{name}@sha256:{right.upper()}", env=offline_env)
    assert pinned.returncode == 0, pinned.stderr
    assert "trusted on first use" not in pinned.stderr
    assert open(entry.path + ".sha256").read().strip() == right
    again = fetch(name, env=offline_env)                                     # recorded: no pin needed any more
    assert again.returncode == 0, again.stderr


def test_trust_on_first_use_prints_the_sha256_it_records(published, offline_env):
    from ms_vit.weights import registry
    name, right = "vit_test_32.unpinned", sha256(published["folder"] / "mindcv.ckpt")
    result = fetch(name, env=dict(offline_env, MS_VIT_TRUST_ON_FIRST_USE="1"))
    assert result.returncode == 0, result.stderr
    assert f"{name}: trusted on first use" in result.stderr and f"sha256 {right}" in result.stderr
    assert f"{name}@sha256:{right}" in result.stderr
    assert open(registry.find(name).path + ".sha256").read().strip() == right


def test_scripts_refuse_an_unpinned_name(published, offline_env, imagenet_sample):
    image = os.path.join(imagenet_sample, "val", sorted(os.listdir(os.path.join(imagenet_sample, "val")))[0])
    image = os.path.join(image, os.listdir(image)[0])
    result = run_script("infer.py", "--pretrained", "vit_test_32.unpinned", image, env=offline_env)
    assert_clean_error(result, "vit_test_32.unpinned has no published sha256")
    assert cache_is_empty(offline_env)


def test_plain_http_mirrors_need_the_switch(published, offline_env):
    env = dict(offline_env, MS_VIT_ALLOW_HTTP_MIRROR="0")
    result = fetch("vit_test_32.model_zoo", env=env)
    assert_clean_error(result, "is plain http: ms_vit downloads over https only", "MS_VIT_ALLOW_HTTP_MIRROR=1")
    assert cache_is_empty(offline_env)


def test_the_command_line_without_a_name_and_into_a_closed_pipe(published, offline_env):
    assert_clean_error(fetch(env=offline_env), "download needs one or more names")
    shell = subprocess.run(f"{sys.executable} -m ms_vit.weights | head -2", shell=True, capture_output=True,
                           text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, **offline_env),
                           executable="/bin/bash")
    assert shell.returncode == 0 and len(shell.stdout.splitlines()) == 2
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr, shell.stderr
    # `true` reads nothing and is gone before the listing is written: the write meets a closed pipe for sure
    closed = subprocess.run(f"set -o pipefail; {sys.executable} -m ms_vit.weights | true", shell=True,
                            capture_output=True, text=True, cwd=ROOT, executable="/bin/bash",
                            env=dict(os.environ, PYTHONPATH=ROOT, **offline_env))
    assert closed.returncode == 0 and closed.stderr == "", closed.stderr


def test_a_file_placed_by_hand_is_verified_then_used(published, offline_env, tmp_path):
    import shutil

    from ms_vit import create_model
    from ms_vit.weights import registry
    entry = registry.find("vit_test_32.model_zoo")
    os.makedirs(os.path.dirname(entry.path))
    shutil.copy(published["folder"] / "mindcv.ckpt", entry.path)                  # the wrong file
    with pytest.raises(registry.WeightsError, match="is not vit_test_32.model_zoo: sha256"):
        create_model(entry.name, pretrained=True)
    shutil.copy(published["folder"] / "zoo.ckpt", entry.path)                     # the right one
    path = "/" + entry.url.split("/", 3)[3]
    before = published["server"].hits.get(path, 0)
    create_model(entry.name, pretrained=True)
    assert published["server"].hits.get(path, 0) == before and os.path.isfile(entry.path + ".sha256")
    with open(entry.path, "r+b") as f:                                            # changed after it was verified
        f.seek(200)
        f.write(b"\x00\x01")
    create_model(entry.name, pretrained=True)                                     # downloaded again
    assert published["server"].hits.get(path, 0) > before
    assert sha256(entry.path) == entry.sha256


def test_unknown_names_are_refused_with_the_close_ones(published, offline_env, imagenet_sample, tmp_path):
    from ms_vit import create_model
    from ms_vit.weights import registry
    with pytest.raises(registry.WeightsError, match="close: vit_base_patch16_224.augreg_in1k"):
        create_model("vit_base_patch16_224.augreg_in1", pretrained=True)
    result = run_script("train.py", "--data_dir", imagenet_sample, "--pretrained", "vit_b_16_224.mindvison",
                        "--ckpt_save_dir", str(tmp_path / "out"), env=offline_env)
    assert_clean_error(result, "no pretrained weights named 'vit_b_16_224.mindvison'", "vit_b_16_224.mindvision")
    assert cache_is_empty(offline_env) and not os.path.exists(tmp_path / "out")


def test_scripts_by_name(published, offline_env, imagenet_sample, tmp_path):
    """infer.py and train.py (fine-tuning, new head) with --pretrained NAME; the listing says what is cached; the
    tutorial's recipe names its checkpoint."""
    import yaml

    from ms_vit.weights import registry
    image = os.path.join(imagenet_sample, "val", sorted(os.listdir(os.path.join(imagenet_sample, "val")))[0])
    image = os.path.join(image, os.listdir(image)[0])
    result = run_script("infer.py", "--pretrained", "vit_test_32.mindvision", image, "--output_dir",
                        str(tmp_path / "pictures"), env=offline_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "  1. " in result.stdout and (tmp_path / "pictures").is_dir()
    result = run_script("train.py", "--data_dir", imagenet_sample, "--pretrained", "vit_test_32.torchvision",
                        "--epoch_size", "1", "--batch_size", "4", "--ckpt_save_dir", str(tmp_path / "run"),
                        env=offline_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "head has 1000 classes, the model 19: head left newly initialised" in result.stdout + result.stderr
    listing = run_script("-m", "ms_vit.weights", env=offline_env).stdout.splitlines()
    cached = {line.split()[0] for line in listing if line.rstrip().endswith("yes")}
    assert {"vit_test_32.mindvision", "vit_test_32.torchvision"} <= cached
    assert "vit_b_16_224.mindvision" not in cached and len(listing) > 78
    recipe = yaml.safe_load(open(os.path.join(ROOT, "configs", "vit_b_16_224_finetune_tutorial.yaml")))
    assert registry.find(recipe["pretrained"]).url == "https://download.mindspore.cn/vision/classification/" \
                                                     "vit_b_16_224.ckpt"


def test_convert_detects_each_layout_and_records_its_numerics(published, tmp_path):
    from ms_vit.weights import checkpoint
    for file, layout, gelu, eps in (("mindvision.ckpt", "mindvision", True, 1e-7),
                                    ("zoo.ckpt", "model_zoo", True, 1e-7), ("jax.npz", "jax", True, 1e-6),
                                    ("tv.pth", "torchvision", False, 1e-6)):
        out = tmp_path / f"{layout}.ckpt"
        result = run_script("-m", "ms_vit.weights.convert", str(published["folder"] / file), "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        _, meta = checkpoint.read(str(out))
        assert meta["layout"] == layout and meta["config"]["gelu_approximate"] is gelu
        assert meta["config"]["layer_norm_eps"] == eps
    assert "entries that are not model weights (optimizer and training state) set aside" in \
        run_script("-m", "ms_vit.weights.convert", str(published["folder"] / "zoo.ckpt"), "--out",
                   str(tmp_path / "again.ckpt")).stderr


def test_the_tutorials_checkpoint_loads_with_mindspores_numerics(published):
    """A MindSpore checkpoint in the tutorial's names without ms_vit's metadata (the public vit_b_16_224.ckpt):
    MindSpore's layer defaults (tanh GELU, LayerNorm eps 1e-7) and MindSpore Vision's preprocessing."""
    import mindspore as ms

    from ms_vit import create_model
    net = create_model(checkpoint_path=str(published["folder"] / "flat.ckpt"))
    net.set_train(False)
    assert net.config.gelu_approximate is True and net.config.layer_norm_eps == 1e-7
    assert net.config.interpolation == "bilinear" and net.config.crop_pct == 0.875
    got = net(ms.Tensor(published["x"])).asnumpy()
    bound = vit_forward(net.config, parameters(net), published["x"])[1]
    assert_within(got, published["expected"]["vit_test_32.mindvision_flat"], bound, "logits vs float64")


def test_ema_copies_of_a_foreign_layout(published, tmp_path):
    """A training checkpoint with ema.* copies: the weights by default, the averages with ema=True."""
    import mindspore as ms

    from ms_vit import create_model
    c, averaged = canonical(), canonical(seed=5)
    tensors = mindcv_names(c)
    tensors.update({"ema." + k: v for k, v in mindcv_names(averaged).items()})
    write_ckpt(tmp_path / "with_ema.ckpt", tensors)
    x = ms.Tensor(published["x"])
    for ema, weights in ((False, c), (True, averaged)):
        net = create_model(checkpoint_path=str(tmp_path / "with_ema.ckpt"), ema=ema)
        net.set_train(False)
        reference = reference_logits(weights, published["x"].astype(np.float64), True, 1e-7)
        bound = vit_forward(net.config, parameters(net), published["x"])[1]
        assert_within(net(x).asnumpy(), reference, bound, f"logits vs float64 (ema={ema})")
