"""Write a trained StableLM as llama.cpp's converter (convert_hf_to_gguf.py) writes a StableLM GGUF.

The same keys (conversion/stablelm.py's set_gguf_parameters), the same tensor names, the same
tokenizer fields (_set_vocab_gpt2 and SpecialVocab) and the converter's F16 rule: matrices in F16,
1-D tensors and norms in F32. So llama.cpp loads the file, and our quantizer treats it as it would
treat a file converted from Hugging Face.
"""

from __future__ import annotations

import json

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

from ..model.loading import weight_slots

ARCH = "stablelm"


def write_gguf(path, model, tokenizer, name: str, description: str) -> None:
    """The model's weights (F16 matrices) and the tokenizer, with the full stablelm.* metadata."""
    c = model.config
    writer = GGUFWriter(str(path), ARCH)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_description(description)
    writer.add_license("MIT")
    writer.add_context_length(c.n_ctx)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.n_ff)
    writer.add_rope_dimension_count(c.n_rot)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_head_kv)
    writer.add_parallel_residual(c.parallel_residual)
    writer.add_layer_norm_eps(c.norm_eps)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    add_tokenizer(writer, tokenizer, c.n_vocab)
    for tensor_name, (module, attr) in weight_slots(model).items():
        value = getattr(module, attr).detach().cpu().numpy().astype(np.float32)
        writer.add_tensor(tensor_name, converter_dtype(tensor_name, value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def converter_type(name: str, shape) -> type:
    """convert_hf_to_gguf --outtype f16: 1-D tensors and norm weights stay F32, matrices become F16."""
    return np.float32 if len(shape) <= 1 or name.endswith("_norm.weight") else np.float16


def converter_dtype(name: str, value: np.ndarray) -> np.ndarray:
    """``value`` (float32) stored as the converter stores it."""
    return value.astype(converter_type(name, value.shape), copy=False)


def add_tokenizer(writer: GGUFWriter, tok, n_vocab: int) -> None:
    """tokenizer.ggml.* as _set_vocab_gpt2 writes them: every token in id order with its type (CONTROL
    for special tokens, USER_DEFINED for the other added tokens, UNUSED for padding rows), the merges,
    and the special ids of GPT-NeoX (<|endoftext|> is bos, eos and unk; <|padding|> pads)."""
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
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = json.loads(tok.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("olmo")  # the converter's name for GPT-NeoX-20B's pre-tokenizer
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    end_of_text = vocab["<|endoftext|>"]
    writer.add_bos_token_id(end_of_text)
    writer.add_eos_token_id(end_of_text)
    writer.add_unk_token_id(end_of_text)
    writer.add_pad_token_id(vocab["<|padding|>"])
    writer.add_add_bos_token(False)  # GPT-NeoX's tokenizer adds no BOS; say so, whatever a reader's default
