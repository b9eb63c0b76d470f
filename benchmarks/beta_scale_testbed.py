"""Why the paper's β 500 does nothing on the test bed: where the DPO term stops, measured against the full-swap margin.

    python benchmarks/beta_scale_testbed.py       # writes benchmarks/beta_scale_testbed.json and its RESULTS.md section

For each β (λ = 0 and one learning rate, so only β differs), on the testbed-red pairs: the DPO loss and reward margin
during training; after training, the margin m(t) = (e⁻_θ − e⁻_ref) − (e⁺_θ − e⁺_ref) per timestep band, next to the
full-swap margin k(t)·‖z⁻ − z⁺‖² of the same band (reward_scale.py), split into its loser part (e⁻ rise) and winner
part (e⁺ change); and the share of red prompts no longer drawn red (DSR, colour classifier).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BANDS = ((0, 150), (150, 300), (300, 500), (500, 750), (750, 1000))


def margins_by_band(pipe, family, cache, draws: int, seed: int = 123) -> dict:
    """m(t), e⁻ and e⁺ changes and the reference error per band, on every pair, adapter on vs off."""
    import torch

    from duo_unlearn.trainer.lora import adapters_disabled

    proc = family.noise_process(pipe, cache.resolution)
    denoiser = family.denoiser(pipe)
    z_l = (cache.unsafe_mean - cache.shift) * cache.scaling
    z_w = (cache.safe_mean - cache.shift) * cache.scaling
    d2 = float((z_l - z_w).pow(2).mean())
    cond = cache.empty.repeat(2 * len(z_l))
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for lo, hi in BANDS:
        acc = dict(m=0.0, loser_rise=0.0, winner_rise=0.0, ref_error=0.0)
        for _ in range(draws):
            noise = torch.randn(z_l.shape, generator=gen)
            t = torch.randint(lo, hi, (len(z_l),), generator=gen)
            x = torch.cat([proc.add_noise(z_l, noise, t), proc.add_noise(z_w, noise, t)])
            tt = torch.cat([t, t])
            target = torch.cat([proc.target(z_l, noise, t), proc.target(z_w, noise, t)])
            with torch.no_grad():
                pol = family.predict(denoiser, x, tt, cond)
                with adapters_disabled(denoiser):
                    ref = family.predict(denoiser, x, tt, cond)
            e_p = (pol - target).pow(2).mean(dim=(1, 2, 3))
            e_r = (ref - target).pow(2).mean(dim=(1, 2, 3))
            rise_l, rise_w = (e_p - e_r)[:len(z_l)], (e_p - e_r)[len(z_l):]
            acc["m"] += float((rise_l - rise_w).mean()) / draws
            acc["loser_rise"] += float(rise_l.mean()) / draws
            acc["winner_rise"] += float(rise_w.mean()) / draws
            acc["ref_error"] += float(e_r[:len(z_l)].mean()) / draws
        acc["full_swap"] = d2 * sum(proc.swap_scale(t) for t in range(lo, hi)) / (hi - lo)
        out[f"{lo}-{hi}"] = {k: round(v, 5) for k, v in acc.items()}
    return out


def dsr_direct(pipe, prompts, per_prompt: int, steps: int, guidance: float) -> dict:
    from duo_unlearn.trainer.detectors.colour import read_image
    from duo_unlearn.trainer.evaluate.run import generate

    reads = [read_image(im) for im in generate(pipe, prompts, per_prompt, 0, steps, guidance)]
    colours: dict = {}
    for r in reads:
        colours[str(r.colour)] = colours.get(str(r.colour), 0) + 1
    return {"dsr": sum(r.colour != "red" for r in reads) / len(reads), "read_as": colours, "n": len(reads)}


def family_kappas() -> str:
    """The test-bed preset's κ on each family it names, as the preset file has them now."""
    from duo_unlearn.trainer.presets import get_preset

    names = {"sd1": "SD 1.x", "sdxl": "SDXL", "sd3": "SD3"}
    preset = get_preset("testbed-red")
    return ", ".join(f"{names.get(f, f)} {preset.for_family(f).kappa:g}" for f in preset.families)


def section(record: dict) -> str:
    rows = ["| β | κ = β·m_swap(t 375) | DPO loss at 25 / 100 / end | reward margin at end | m ÷ full swap, t 300–500 "
            "/ 500–750 | DSR direct | red drawn as |", "|---|---|---|---|---|---|---|"]
    for r in record["runs"]:
        log = {entry["step"]: entry for entry in r["log"]}
        end = log[max(log)]
        rows.append(f"| {r['beta']:g} | {r['kappa']:.3g} | {log[25]['dpo']:.3f} / {log[100]['dpo']:.3f} / "
                    f"{end['dpo']:.3f} | {end['reward_margin']:.2f} | "
                    + " / ".join(f"{r['margins'][b]['m'] / r['margins'][b]['full_swap']:.2f}"
                                 for b in ("300-500", "500-750")) + f" | {r['dsr']['dsr']:.3f} | "
                    f"{', '.join(f'{k} {v}' for k, v in sorted(r['dsr']['read_as'].items()))} |")
    bands = ["| t band | full-swap margin | " + " | ".join(f"β {r['beta']:g}: m (e⁻ rise, e⁺ change)"
                                                       for r in record["runs"]) + " | reference error e⁻ |",
             "|---|---|" + "---|" * len(record["runs"]) + "---|"]
    for band in record["runs"][0]["margins"]:
        first = record["runs"][0]["margins"][band]
        cells = [f"{r['margins'][band]['m']:.4f} ({r['margins'][band]['loser_rise']:+.4f}, "
                 f"{r['margins'][band]['winner_rise']:+.4f})" for r in record["runs"]]
        bands.append(f"| {band} | {first['full_swap']:.3f} | " + " | ".join(cells) + f" | {first['ref_error']:.4f} |")
    s = record["settings"]
    margins = [max(r["log"], key=lambda e: e["step"])["reward_margin"] for r in record["runs"]]
    ends = f"{min(margins):.0f} and {max(margins):.0f}"
    swaps = [m["full_swap"] for m in record["runs"][0]["margins"].values()]
    spread = f"{min(swaps):.3g}–{max(swaps):.3g}"
    kappas = family_kappas()
    return "\n".join([
        "## Why the paper's β 500 does nothing on the test bed",
        "",
        "Reproduce: `" + record["command"] + "` "
        f"({record['seconds']:.0f} s on {record['threads']} CPU thread(s)). Each run: testbed-red pairs "
        f"({s['pairs']}), λ = 0, lr {s['lr']:g}, {s['steps']} steps, rank 32, seed 0; only β differs. "
        f"DSR: {s['per_prompt']} seeds x the 9 red prompts, DDIM 25 steps, guidance 5. Pair latent distance "
        f"mean ‖z⁻ − z⁺‖² = {record['d2']:.3f}; full-swap margin at t = 375 (middle of t ∈ [0, 750)): "
        f"{record['m_swap']:.3f}.",
        "",
        *rows,
        "",
        "Margins after training, per timestep band, on every pair (adapter on vs off, same noise):",
        "",
        *bands,
        "",
        "Reading. −log σ(β·m) stops pushing once β·m is a few units: the DPO loss is ≈ 0 by step 100 in every",
        "run, and the runs end with β·m (the reward margin) between " + ends + ", so the margin m a run",
        "reaches falls about as 1/β. A model that took the red image for its twin would err on it by the full-swap",
        "margin k(t)·‖z⁻ − z⁺‖² of each band. Where colour is decided (t 300–750) the β 500 run stops at a fraction",
        "of that swap, reached mostly by *raising* the error on the red images (the e⁻ rise) while the twin's error",
        "rises too, not by predicting the twin: samples keep their colour. β 50 passes the swap only in the later",
        "band and erases red in about half the images; β 10 passes it in both, which is why it removes red and also",
        "why, with nothing to hold the rest, it damages orange, backgrounds and shapes (`duo_preset_lam0` in the",
        "efficacy table). So β ≥ 50 is not inert at this lr: erasure falls off as the run stops further short of the",
        "swap, and the paper's whole recipe (β 500 with its lr 6e-5 and λ 5e6, row `duo_paper_b500`) erases none.",
        "",
        "Hence the rule the test-bed preset follows: κ = β·m_swap, β set from the pairs (`--kappa`, β = κ / m_swap),",
        "so that runs on any pairs stop at the same place relative to the swap, instead of a constant β whose",
        "meaning changes with the model and the pairs; the damage past the swap is held by λ and the retain set.",
        "What the rule does not fix: the value of κ. It is chosen per family by screens (" + kappas + ":",
        "all of the order of the loss's saturation, where the paper's β 500 is κ ≈ " + f"{500 * record['m_swap']:.0f}" + " on these pairs), and",
        "m_swap is read at one t (375, the middle of the training range) while the swap spans " + spread + " across the",
        "bands, so κ compares pairs at one t rather than describing every band. The SD presets (`nudity`, `violence`)",
        "keep the paper's β: κ on SD 1.4's pairs was not measured (no weights here). Every run prints its κ and",
        "records it in the adapter (`duo.kappa`), so the same quantity can be read on SD pairs; that reading is what",
        "would say whether the paper's β 500 sits at a comparable κ there.",
        "",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--betas", default="10,50,500")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--per-prompt", type=int, default=2)
    p.add_argument("--draws", type=int, default=2, help="noise draws per band for the margins")
    p.add_argument("--work", default=str(HERE.parent / "runs" / "beta_scale_testbed"))
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--from-json", help="only rebuild the RESULTS.md section from a saved record")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from efficacy_testbed import write_section

    if args.from_json:
        write_section(Path(args.results), section(json.loads(Path(args.from_json).read_text())), "beta_scale")
        return 0
    import torch

    from duo_unlearn.trainer.config import TrainConfig
    from duo_unlearn.trainer.families import get_family
    from duo_unlearn.trainer.latent_cache import build_cache
    from duo_unlearn.trainer.lora import remove_lora
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.pair_dataset import read_pairs
    from duo_unlearn.trainer.pairs import generate_pairs
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.reward_scale import full_swap_margin
    from duo_unlearn.trainer.testbed.shapes import BACKGROUNDS, SHAPES, full_prompt
    from duo_unlearn.trainer.train import train
    from duo_unlearn.trainer.unlearn import UnlearnConfig, plan

    started = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    preset = get_preset("testbed-red")
    pair_cfg = plan(UnlearnConfig(preset="testbed-red", out=str(work / "x.safetensors"), pairs_dir=str(work / "pairs"),
                                  edit_region="image", num_retain=0))[1][0].pairs
    model = load_model("testbed")
    generate_pairs(pair_cfg, model=model)
    family = get_family(model.family)
    pipe = model.pipe
    records = read_pairs(pair_cfg.out)
    cache = build_cache(pipe, family, records, Path(pair_cfg.out), "empty", "cpu", 64, None)
    m_swap, _ = full_swap_margin(cache, family.noise_process(pipe, 64), (0, 750))
    d2 = float((cache.unsafe_mean - cache.safe_mean).mul(cache.scaling).pow(2).mean())
    red = [full_prompt("red", s, b) for s in SHAPES for b in BACKGROUNDS]
    runs = []
    for beta in [float(b) for b in args.betas.split(",")]:
        out = work / f"beta{beta:g}.safetensors"
        log: list = []
        cfg = TrainConfig(pairs=pair_cfg.out, model="testbed", out=str(out), beta=beta, lam=0.0, lr=args.lr,
                          steps=args.steps, overwrite=True)
        result = train(cfg, lambda e: log.append({"step": e.step, **e.logs}) if e.logs else None, model=model)
        # train() leaves its LoRA on the model, enabled: measure it, then remove it for the next β
        margins = margins_by_band(pipe, family, cache, args.draws)
        dsr = dsr_direct(pipe, red, args.per_prompt, preset.sample_steps, preset.guidance)
        remove_lora(family.denoiser(pipe))
        runs.append({"beta": beta, "kappa": beta * m_swap, "seconds": result.seconds, "dsr": dsr, "margins": margins,
                     "log": [{k: round(v, 5) if isinstance(v, float) else v for k, v in entry.items()}
                             for entry in log if entry["step"] in (25, 50, 100, 200) or entry["step"] == args.steps]})
        print(json.dumps({"beta": beta, "dsr": dsr, "margins": margins}), flush=True)
    record = {"runs": runs, "m_swap": m_swap, "d2": d2, "seconds": time.time() - started,
              "threads": torch.get_num_threads(),
              "settings": {"lr": args.lr, "steps": args.steps, "per_prompt": args.per_prompt, "pairs": len(records),
                           "draws": args.draws},
              "command": ("python benchmarks/beta_scale_testbed.py " +
                          " ".join(sys.argv[1:] if argv is None else argv)).strip()}
    (HERE / "beta_scale_testbed.json").write_text(json.dumps(record, indent=1))
    write_section(Path(args.results), section(record), "beta_scale")
    print(section(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
