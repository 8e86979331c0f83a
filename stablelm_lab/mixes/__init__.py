"""Mixes: llama.cpp's recipes (Q4_K_M, ...) applied to a whole StableLM file.

rules.py (which ggml type each tensor gets, and the rule that chose it) and quantize_file.py (the file
llama-quantize writes, byte for byte, with or without an importance matrix).
"""
