"""A Ring-A-Bell-style black-box attack (Tsai et al., 2024): it needs only the text encoders.

1. Concept direction: c = mean_i [E(p_i) − E(q_i)] over prompt pairs with (p) and without (q) the concept,
   E the family's prompt conditioning: SD 1.x/2.x the text encoder's output sequence (L x D); SDXL both CLIP
   encoders' states and the pooled embedding; SD3 the CLIP and T5 states and the pooled embeddings.
2. Target: E(neutral prompt) + η·c.
3. A small genetic search over word tokens for a K-token prompt whose E is closest (MSE, summed over E's tensors)
   to the target.
The prompts found are then given to the unlearned model like any other prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..progress import ProgressEvent, report
from .prompt_attack import AttackPrompts
from .white_box import AttackedModel


@dataclass
class SearchResult:
    ids: list[int]
    fitness: float
    history: list[float] = field(default_factory=list)  # best fitness per generation (the first: random prompts)


def text_embeddings(model: AttackedModel, prompts: Sequence[str]) -> dict:
    """E(prompts): each tensor of the family's conditioning, one row per prompt."""
    import torch

    with torch.no_grad():
        cond = model.encode(prompts).kwargs
    out = {}
    for name, value in cond.items():
        for sub, tensor in (value.items() if isinstance(value, dict) else [("", value)]):
            out[f"{name}.{sub}" if sub else name] = tensor.float()
    return out


def concept_direction(model: AttackedModel, concept_prompts: Sequence[str], free_prompts: Sequence[str]) -> dict:
    """mean(E(concept prompts)) − mean(E(concept-free prompts)), per tensor of E."""
    concept, free = text_embeddings(model, concept_prompts), text_embeddings(model, free_prompts)
    return {k: concept[k].mean(0) - free[k].mean(0) for k in concept}


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


def embedding_fitness(model: AttackedModel, target: dict):
    """fitness(ids) = −Σ MSE(E(the ids written out), target) over E's tensors, one encoding per population. The
    words are written out and tokenized again ([BOS] ids [EOS] pad…, in every tokenizer): they are exactly the
    prompt that is then generated."""
    import numpy as np

    tok = model.tokenizer

    def fitness(pop: np.ndarray) -> np.ndarray:
        emb = text_embeddings(model, [tok.decode([int(i) for i in row]).strip() for row in pop])
        return (-sum((emb[k] - t.unsqueeze(0)).pow(2).mean(dim=tuple(range(1, t.ndim + 1)))
                     for k, t in target.items())).cpu().numpy()
    return fitness


def ring_a_bell(pipe, concept_prompts: Sequence[str], free_prompts: Sequence[str], neutral_prompts: Sequence[str],
                strength: float = 3.0, length: int = 8, population: int = 64, generations: int = 60,
                mutation: float = 0.15, exclude_words: Sequence[str] = (), seed: int = 0,
                progress=None, family=None) -> AttackPrompts:
    """One prompt per neutral prompt, found by the genetic search; the tokens of `exclude_words` are never used.
    `family`: the pipeline's (default: found from its class)."""
    model = AttackedModel(pipe, family)
    length = max(1, min(length, model.max_length() - 2))
    direction = concept_direction(model, concept_prompts, free_prompts)
    vocab = model.vocabulary(exclude_words)
    neutral = text_embeddings(model, neutral_prompts)
    prompts, searches = [], []
    for k, prompt in enumerate(neutral_prompts):
        target = {name: neutral[name][k] + strength * direction[name] for name in direction}
        result = genetic_search(embedding_fitness(model, target), vocab, length, population,
                                generations, mutation, seed=seed + k, progress=progress, label=f"{k + 1}")
        found = model.tokenizer.decode(result.ids).strip()
        prompts.append(found)
        searches.append({"neutral_prompt": prompt, "found": found, "fitness": result.fitness,
                         "fitness_history": [round(v, 6) for v in result.history]})
    settings = {"strength": strength, "length": length, "population": population, "generations": generations,
                "mutation": mutation, "exclude_words": list(exclude_words), "vocabulary": len(vocab),
                "concept_prompts": list(concept_prompts), "free_prompts": list(free_prompts)}
    return AttackPrompts("ring_a_bell", prompts, settings, {"searches": searches})
