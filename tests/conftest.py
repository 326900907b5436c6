# Triton kernels run through the interpreter on CPU; this must be set before any kernel import.
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Under the interpreter "auto" would route every scorer test through the Triton interpreter (minutes);
# scorer-level tests use the CPU default, the C++ kernel (torch for ops without one), unless they ask for
# another backend (each kernel has its own tests).
os.environ.setdefault("LARK_FAST_BACKEND", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from helpers import byte_tokenizer, tiny_llama  # noqa: E402


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny local student directory (model + tokenizer), as ``--model`` takes it."""
    d = tmp_path_factory.mktemp("student")
    tiny_llama().save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d
