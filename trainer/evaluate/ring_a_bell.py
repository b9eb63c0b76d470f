"""A Ring-A-Bell-style black-box attack (Tsai et al., 2024): it needs only the text encoder.

1. Concept direction: c = mean_i [E(p_i) − E(q_i)] over prompt pairs with (p) and without (q) the concept,
   E the text encoder's output sequence (L x D).
2. Target: E(neutral prompt) + η·c.
3. A small genetic search over word tokens for a K-token prompt whose E is closest (MSE) to the target.
The prompts found are then given to the unlearned model like any other prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..progress import ProgressEvent, report
from .prompt_attack import AttackPrompts


@dataclass
class SearchResult:
    ids: list[int]
    fitness: float
    history: list[float] = field(default_factory=list)  # best fitness per generation (the first: random prompts)


def _ids(tokenizer, prompts: Sequence[str]):
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def text_embeddings(pipe, input_ids):
    import torch

    with torch.no_grad():
        return pipe.text_encoder(input_ids.to(pipe.text_encoder.device))[0].float()


def concept_direction(pipe, concept_prompts: Sequence[str], free_prompts: Sequence[str]):
    """mean(E(concept prompts)) − mean(E(concept-free prompts)): L x D."""
    tok = pipe.tokenizer
    return (text_embeddings(pipe, _ids(tok, concept_prompts)).mean(0)
            - text_embeddings(pipe, _ids(tok, free_prompts)).mean(0))


def word_vocabulary(tokenizer, exclude: Sequence[str] = ()) -> list[int]:
    """Ids of word tokens (CLIP's `…</w>`, letters only) that a prompt can spell: the word, tokenized again,
    is that one token (so a found prompt, written out, gives the model the tokens that were searched). The
    excluded words (e.g. the concept's) are left out."""
    banned = {w.lower() for w in exclude}
    special = set(tokenizer.all_special_ids)
    candidates = []
    for token, i in tokenizer.get_vocab().items():
        word = token[:-4] if token.endswith("</w>") else None
        if word and word.isalpha() and word.lower() not in banned and i not in special:
            candidates.append((word, i))
    if not candidates:
        return []
    again = tokenizer([w for w, _ in candidates], add_special_tokens=False).input_ids
    return sorted(i for (_, i), ids in zip(candidates, again) if list(ids) == [i])


def genetic_search(fitness: Callable, vocab: Sequence[int], length: int, population: int = 64,
                   generations: int = 60, mutation: float = 0.15, crossover: float = 0.5, elite: int = 4,
                   tournament: int = 3, seed: int = 0, progress=None, label: str = "") -> SearchResult:
    """Maximise fitness(ids: population x length int array) -> population floats. Elitist, so the best never
    gets worse; tournament selection, one-point crossover, per-token mutation to a random vocabulary word."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.asarray(vocab)
    pop = rng.choice(vocab, size=(population, length))
    history = []
    for g in range(generations + 1):
        fit = np.asarray(fitness(pop), dtype=np.float64)
        order = np.argsort(-fit)
        history.append(float(fit[order[0]]))
        if g == generations:
            break
        if progress and (g + 1) % 10 == 0:
            report(progress, ProgressEvent("attack", g + 1, generations, logs={"fitness": history[-1]}))

        def pick():
            contenders = rng.integers(0, population, tournament)
            return pop[contenders[np.argmax(fit[contenders])]]

        children = [pop[i].copy() for i in order[:elite]]
        while len(children) < population:
            a, b = pick(), pick()
            child = a.copy()
            if rng.random() < crossover and length > 1:
                cut = rng.integers(1, length)
                child[cut:] = b[cut:]
            flip = rng.random(length) < mutation
            child[flip] = rng.choice(vocab, size=int(flip.sum()))
            children.append(child)
        pop = np.stack(children)
    best = pop[order[0]]  # the last generation, just scored
    return SearchResult([int(i) for i in best], history[-1], history)


def embedding_fitness(pipe, target):
    """fitness(ids) = −MSE(E([BOS] ids [EOS] pad…), target), one text-encoder call per population."""
    import numpy as np
    import torch

    tok = pipe.tokenizer
    L = tok.model_max_length
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def fitness(pop: np.ndarray) -> np.ndarray:
        n, k = pop.shape
        ids = torch.full((n, L), pad, dtype=torch.long)
        ids[:, 0] = tok.bos_token_id
        ids[:, 1:k + 1] = torch.from_numpy(pop)
        ids[:, k + 1] = tok.eos_token_id
        emb = text_embeddings(pipe, ids)
        return (-(emb - target.unsqueeze(0)).pow(2).mean(dim=(1, 2))).cpu().numpy()
    return fitness


def ring_a_bell(pipe, concept_prompts: Sequence[str], free_prompts: Sequence[str], neutral_prompts: Sequence[str],
                strength: float = 3.0, length: int = 8, population: int = 64, generations: int = 60,
                mutation: float = 0.15, exclude_words: Sequence[str] = (), seed: int = 0,
                progress=None) -> AttackPrompts:
    """One prompt per neutral prompt, found by the genetic search; the tokens of `exclude_words` are never used."""
    tok = pipe.tokenizer
    length = max(1, min(length, tok.model_max_length - 2))
    direction = concept_direction(pipe, concept_prompts, free_prompts)
    vocab = word_vocabulary(tok, exclude_words)
    neutral = text_embeddings(pipe, _ids(tok, neutral_prompts))
    prompts, searches = [], []
    for k, (prompt, base) in enumerate(zip(neutral_prompts, neutral)):
        result = genetic_search(embedding_fitness(pipe, base + strength * direction), vocab, length, population,
                                generations, mutation, seed=seed + k, progress=progress, label=f"{k + 1}")
        found = tok.decode(result.ids).strip()
        prompts.append(found)
        searches.append({"neutral_prompt": prompt, "found": found, "fitness": result.fitness,
                         "fitness_history": [round(v, 6) for v in result.history]})
    settings = {"strength": strength, "length": length, "population": population, "generations": generations,
                "mutation": mutation, "exclude_words": list(exclude_words), "vocabulary": len(vocab),
                "concept_prompts": list(concept_prompts), "free_prompts": list(free_prompts)}
    return AttackPrompts("ring_a_bell", prompts, settings, {"searches": searches})
