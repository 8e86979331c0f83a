"""Train the embedded default model: ``python -m stablelm_lab.train`` (see __main__.py).

corpus.py    the Python standard library as training text, a held-out slice, a GPT-NeoX-style tokenizer
trainer.py   fresh weights in the package's own StableLM modules, the training loop (seeded)
export.py    the GGUF file, written as llama.cpp's converter writes it
evaluate.py  bits per byte vs gzip, previous-token and induction scores of each attention head
"""
