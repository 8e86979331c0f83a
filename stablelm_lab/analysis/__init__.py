"""Analysis: what a quantization costs, and what the model's activations say.

metrics.py (tensor error, perplexity and KL divergence as llama-perplexity measures them),
tensor_stats.py (blocks that decode to inf or NaN), imatrix.py (the importance matrix, as llama-imatrix
collects and stores it) and bench.py (speed tables with a baseline measured in the same run).
"""
