"""Evaluation and red-teaming of unlearned models: DSR, prior preservation (1 − LPIPS), attacks, the report.

One concept per module: prompts (prompt sets from files), dsr, preservation, quality (FID, CLIP score), methods
(base / negative prompt / adapters on one pipeline), prompt_attack, concept_inversion, ring_a_bell,
unlearn_diff_atk, report, and run
(`duo-unlearn eval`).
Torch-heavy imports happen inside the functions.
"""
from .run import ATTACKS, EvalConfig, evaluate, plan, summary_table

__all__ = ["ATTACKS", "EvalConfig", "evaluate", "plan", "summary_table"]
