"""The training text: the Python standard library of the running interpreter: code and English.

Code: every ``.py`` file of the stdlib except tests, codec tables and the bundled third-party tree.
English: the Python reference manual's topics that ``pydoc`` ships (``pydoc_data.topics``).
Both are under the PSF License (data/LICENSE-PSF.txt), which permits training on them and shipping
the result. A slice of the documents is held out for evaluation.
"""

from __future__ import annotations

import hashlib
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# 1 in 40 code files and 1 in 6 reference topics are held out, chosen by a hash of the name (stable as
# files come and go): about 350 KB of code and 50 KB of English
HELD_OUT_EVERY = {False: 40, True: 6}  # english? -> every how many
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "encodings", "pydoc_data", "__pycache__"}


@dataclass(frozen=True)
class Document:
    name: str  # "asyncio/events.py" or "topics/assert"
    text: str
    english: bool

    @property
    def held_out(self) -> bool:
        return zlib.crc32(self.name.encode()) % HELD_OUT_EVERY[self.english] == 0


def stdlib_documents(stdlib: Path | None = None) -> list[Document]:
    """Every document of the corpus, sorted by name (the order never depends on the file system)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    code = [
        Document(path.relative_to(root).as_posix(), path.read_text(encoding="utf-8"), english=False)
        for path in sorted(root.rglob("*.py"))
        if _is_source(path.relative_to(root))
    ]
    return code + reference_topics()


def _is_source(rel: Path) -> bool:
    return not any(part in SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1])


def reference_topics() -> list[Document]:
    return [Document(f"topics/{name}", text, english=True) for name, text in sorted(topics.items())]


def split(documents: list[Document]) -> tuple[list[Document], list[Document]]:
    """(training documents, held-out documents)."""
    return [d for d in documents if not d.held_out], [d for d in documents if d.held_out]


def held_out_text(documents: list[Document]) -> str:
    """The held-out documents as one text, separated by blank lines: what data/heldout.txt holds."""
    return "\n\n".join(d.text.strip("\n") for d in split(documents)[1]) + "\n"


def fingerprint(documents: list[Document]) -> str:
    """SHA-256 of the whole corpus: equal fingerprints, equal training text."""
    h = hashlib.sha256()
    for d in documents:
        h.update(d.name.encode() + b"\0" + d.text.encode() + b"\0")
    return h.hexdigest()


# ---- tokens: a byte-level BPE in the GPT-NeoX style ------------------------------------------------
SPECIAL_TOKENS = ["<|endoftext|>", "<|padding|>"]  # ids 0 and 1, as in GPT-NeoX-20B
WHITESPACE_RUNS = [" " * n for n in range(24, 1, -1)]  # GPT-NeoX's added tokens: 24 spaces down to 2


def train_tokenizer(documents: list[Document], vocab_size: int) -> Tokenizer:
    """GPT-NeoX-20B's recipe at a smaller size: NFC, the GPT-2 pre-tokenizer split, byte-level BPE, and
    the whitespace runs added after training as the last ids (so indentation is one token: four spaces,
    eight spaces...). Deterministic for the same text.

    As in GPT-NeoX, BPE has also learned a few merges of spaces ("ĠĠ") that the added runs now shadow:
    added tokens are matched before BPE sees the text.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(WHITESPACE_RUNS),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((d.text for d in documents), trainer=trainer)
    tok.add_tokens([AddedToken(ws, normalized=True, special=False) for ws in WHITESPACE_RUNS])
    return tok
