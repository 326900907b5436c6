# Triton kernels run through the interpreter on CPU; this must be set before any kernel import.
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Under the interpreter "auto" would route every scorer test through the Triton interpreter (minutes);
# scorer-level tests use the torch path unless they ask for the kernel (the kernel has its own tests).
os.environ.setdefault("LARK_FAST_BACKEND", "torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")


def byte_tokenizer(chat_template=CHATML):
    """A 258-token byte-level tokenizer (every byte one token) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                  pad_token="<|im_end|>")
    tok.chat_template = chat_template
    return tok


def tiny_llama(vocab_size=1003, hidden_size=72, layers=2, tie=False, seed=0, init_std=0.2, **extra):
    """A random Llama-architecture student; a large init_std makes its predictions peaked."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=tie, initializer_range=init_std, **extra)
    return LlamaForCausalLM(cfg).eval()


def make_records(n_problems=4, per_problem=3, seed=0):
    """Pool records with varied lengths (some long, some a few tokens)."""
    import random
    rng = random.Random(seed)
    words = ["the", "sum", "of", "x", "and", "y", "is", "so", "we", "get", "2", "7", "=", "+", "therefore"]
    out = []
    for p in range(n_problems):
        for c in range(per_problem):
            n = rng.choice([1, 3, 12, 40, 90])
            answer = " ".join(rng.choice(words) for _ in range(n))
            msgs = [{"role": "user", "content": f"Problem {p}: what is {p} + {c}?"},
                    {"role": "assistant", "content": answer}]
            if (p + c) % 2:
                msgs.insert(0, {"role": "system", "content": "You are a careful mathematician."})
            out.append({"problem_id": f"prob-{p}", "candidate_id": f"cand-{c}", "teacher": f"T{c % 2}",
                        "messages": msgs})
    return out


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
