"""A CLIP BPE vocabulary of our own: every caption word is one token, anything else falls back to letters.

The merges are learnt by plain BPE on the word list, so replaying them (which is what CLIPTokenizer does) always
rebuilds each word in one piece.
"""
from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for seq in pieces.values():
            counts.update(zip(seq, seq[1:]))
        if not counts:
            return merges
        best = max(counts.items(), key=lambda kv: (kv[1], tuple(-ord(c) for c in kv[0][0] + " " + kv[0][1])))[0]
        merges.append(best)
        for w, seq in pieces.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            pieces[w] = out


def write_tokenizer_files(folder: Path, words: list[str]) -> None:
    """vocab.json + merges.txt in the layout CLIPTokenizer.from_pretrained reads."""
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(words)
    symbols = list(string.ascii_lowercase + string.digits + ",.!?'-")
    tokens = [BOS, EOS, *symbols, *(s + "</w>" for s in symbols)]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def build_tokenizer(folder: Path, words: list[str]):
    """Write the files, then load them back the way every user will (from_pretrained, not vocab_file=)."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder, words)
    tok = CLIPTokenizer.from_pretrained(
        str(folder), model_max_length=MAX_LENGTH, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    tok.save_pretrained(str(folder))
    return tok
