"""The character-level tokenizer of the embedded models, in Hugging Face format.

One token per character keeps the vocabulary tiny (~100) and makes digit-level arithmetic
learnable by ~1M-parameter models. It is saved as ``tokenizer.json`` and loads with
``AutoTokenizer.from_pretrained(path)`` like any other fast tokenizer.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# The Qwen2.5-Math-PRM step separator: the PRM reads its score at each of these.
STEP_TAG = "<extra_0>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, STEP_TAG]
CHARS = ["\n", " "] + [c for c in string.printable if c not in string.whitespace]

# The chat template renders the question and opens the solution; each step then ends with
# the step delimiter "\n\n", exactly as the policy was trained.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ message['content'] | trim }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '\\n\\n' + message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\n' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split every character (including newlines) into its own piece.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[STEP_TAG],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
