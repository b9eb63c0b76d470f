"""Prompt attacks: prompts (paraphrases, synonyms) from a file or a list, and the attack result type all share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .prompts import load_prompts, replace_words


@dataclass
class AttackPrompts:
    """What an attack hands to generation: prompts (possibly holding a learned token), plus what made them."""
    name: str
    prompts: list[str]
    settings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "prompts": self.prompts, "settings": self.settings, "info": self.info}


def prompt_attack(prompts: list[str] | None = None, path: str | Path | None = None,
                  name: str = "prompts") -> AttackPrompts:
    """The prompts of a list or a file (.txt one per line, .csv with a `prompt` column), unchanged."""
    if path is not None:
        return AttackPrompts(name, load_prompts(path), {"file": str(path)})
    return AttackPrompts(name, list(prompts or []), {"source": "list"})


def synonym_attack(prompts: list[str], words: list[str], synonyms: list[str], name: str = "synonyms") -> AttackPrompts:
    """Every prompt that names the concept (any of `words`), once per synonym in its place."""
    out = []
    for p in prompts:
        for s in synonyms:
            new = replace_words(p, words, s)
            if new is not None:
                out.append(new)
    return AttackPrompts(name, list(dict.fromkeys(out)), {"words": list(words), "synonyms": list(synonyms)})
