"""The container: a GGUF file's bytes read as metadata, a tensor table and each tensor's raw blocks.

gguf_file.py (``GGUFFile``, the validating one-pass reader) and default_model.py (which file the workbook
opens: the embedded default in data/, or the one ``STABLELM_GGUF`` names). Knows nothing of StableLM.
"""
