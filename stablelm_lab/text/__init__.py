"""Text: the GPT-NeoX BPE tokenizer stored in the file, sampling, and generation with the KV cache.

tokenizer.py (the file's ``tokenizer.ggml.*`` keys as a ``tokenizers.Tokenizer``), sampling.py (the
model card's order and llama.cpp's) and generate.py (prompt -> tokens -> text).
"""
