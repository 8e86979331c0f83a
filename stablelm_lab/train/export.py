"""Write a trained StableLM as llama.cpp's converter (convert_hf_to_gguf.py) writes a StableLM GGUF.

The same keys (conversion/stablelm.py's set_gguf_parameters), the same tensor names, the same
tokenizer fields (_set_vocab_gpt2 and SpecialVocab) and the converter's F16 rule: matrices in F16,
1-D tensors and norms in F32. So llama.cpp loads the file, and our quantizer treats it as it would
treat a file converted from Hugging Face.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType
from tokenizers import Tokenizer

from ..model import StableLM
from ..model.loading import weight_slots

ARCH = "stablelm"


class Hyperparameters(Protocol):
    """What the stablelm.* keys record: StableLMConfig has these fields, and so has the tests' TinySpec."""

    n_ctx: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_rot: int
    n_head: int
    n_head_kv: int
    norm_eps: float


def write_gguf(path: str | Path, model: StableLM, tokenizer: Tokenizer, name: str, description: str) -> None:
    """The model's weights (F16 matrices) and the tokenizer, with the full stablelm.* metadata."""
    c = model.config
    writer = GGUFWriter(str(path), ARCH)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_description(description)
    writer.add_license("MIT")
    add_hyperparameters(writer, c, c.parallel_residual)
    add_tokenizer(writer, tokenizer, c.n_vocab)
    for tensor_name, (module, attr) in weight_slots(model).items():
        value = getattr(module, attr).detach().cpu().numpy().astype(np.float32)
        writer.add_tensor(tensor_name, converter_dtype(tensor_name, value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_hyperparameters(
    writer: GGUFWriter, c: Hyperparameters, parallel_residual: bool, rope_base: float | None = None
) -> None:
    """The stablelm.* keys in the order conversion/stablelm.py's set_gguf_parameters writes them, and the
    file type (F16). ``parallel_residual`` apart from ``c``: the converter writes True when config.json
    lacks the key, so a file's key can contradict its tensors (the tests write such files). ``rope_base``:
    the converter writes no rope.freq_base for StableLM; other writers may, and readers must cope."""
    writer.add_context_length(c.n_ctx)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.n_ff)
    writer.add_rope_dimension_count(c.n_rot)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_head_kv)
    writer.add_parallel_residual(parallel_residual)
    writer.add_layer_norm_eps(c.norm_eps)
    if rope_base is not None:
        writer.add_rope_freq_base(rope_base)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)


def converter_type(name: str, shape: tuple[int, ...]) -> type[np.floating]:
    """convert_hf_to_gguf --outtype f16: 1-D tensors and norm weights stay F32, matrices become F16."""
    return np.float32 if len(shape) <= 1 or name.endswith("_norm.weight") else np.float16


def converter_dtype(name: str, value: np.ndarray) -> np.ndarray:
    """``value`` (float32) stored as the converter stores it."""
    return value.astype(converter_type(name, value.shape), copy=False)


# ---- the tokenizer: tokenizer.ggml.* as convert_hf_to_gguf.py's _set_vocab_gpt2 writes them ----------------
def looks_special(token: str) -> bool:
    """An added token the converter marks CONTROL although its tokenizer does not call it special
    (conversion/base.py, does_token_look_special):

        seems_special = token_text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        seems_special = seems_special or (token_text.startswith("<|") and token_text.endswith("|>"))
        seems_special = seems_special or (token_text.startswith("<｜") and token_text.endswith("｜>"))
        seems_special = seems_special or (token_text.startswith("<unused") and token_text.endswith(">"))

    Not every ``<...>``: an added ``<foo>`` that is not special stays USER_DEFINED."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def token_types(tok: Tokenizer, n_vocab: int) -> tuple[list[str], list[TokenType]]:
    """Every token in id order with its type, as get_vocab_base lists them: CONTROL for added tokens that
    are special or look special, USER_DEFINED for the other added tokens, UNUSED ``[PAD<id>]`` for the
    rows past the tokenizer (the padded vocabulary), NORMAL for the rest."""
    vocab = tok.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in vocab.items()}
    added = tok.get_added_tokens_decoder()
    if max(by_id) >= n_vocab:
        raise ValueError(f"the tokenizer has ids up to {max(by_id)}, the model only {n_vocab} rows")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].special or looks_special(by_id[i])
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    return tokens, types


def add_tokenizer(writer: GGUFWriter, tok: Tokenizer, n_vocab: int, pre: str | None = "olmo") -> None:
    """tokenizer.ggml.* as _set_vocab_gpt2 writes them: the tokens and their types, the merges, and the
    special ids of GPT-NeoX (<|endoftext|> is bos, eos and unk; <|padding|> pads). ``pre``: "olmo" is the
    converter's name for GPT-NeoX-20B's pre-tokenizer; None leaves the key out, as in files converted
    before llama.cpp had it."""
    tokens, types = token_types(tok, n_vocab)
    vocab = tok.get_vocab(with_added_tokens=True)
    merges = json.loads(tok.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    end_of_text = vocab["<|endoftext|>"]
    writer.add_bos_token_id(end_of_text)
    writer.add_eos_token_id(end_of_text)
    writer.add_unk_token_id(end_of_text)
    writer.add_pad_token_id(vocab["<|padding|>"])
    # GPT-NeoX's tokenizer adds no BOS. The converter says so: gguf-py's SpecialVocab reads the ByteLevel
    # post-processor of tokenizer.json as `self.add_special_token.setdefault('bos', False)` (vocab.py,
    # _try_load_from_tokenizer_json) and writes it with add_add_bos_token. (It sets 'eos' False too; the
    # embedded default was written without that key, and llama.cpp's default for it is false already.)
    writer.add_add_bos_token(False)
