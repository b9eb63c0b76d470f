"""`duo-unlearn eval`: several methods (base, negative prompt, adapters) x attacks -> DSR and prior preservation."""
from __future__ import annotations

import math
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import check_folder_writable, staged_files
from ..config import check_batch, check_sample_steps, check_seed
from ..errors import UserError
from ..progress import ProgressCallback, ProgressEvent, report
from .methods import BASE, NEGATIVE, Method, activated, adapter_method, load_adapters
from .prompt_attack import AttackPrompts, prompt_attack
from .prompts import load_prompts
from .quality import FID_FEATURES

SD_PROMPT_TOKENS = 77  # CLIP's context length: the token attacks optimise CLIP token embeddings in every family
ATTACKS = ("direct", "prompts", "concept_inversion", "ring_a_bell", "unlearndiffatk")
HELP = {  # `duo-unlearn eval` flag help (names shared with other commands mean something else here)
    "model": "base model the adapters were trained on: diffusers folder, checkpoint file, or a bundled test bed "
             "(testbed, testbed-xl, testbed-sd3)",
    "preset": "preset giving the concept, prompts, detector and sampling settings (testbed-red, nudity, ...)",
    "concept": "which concept of the preset (also the negative prompt and the word attacks replace)",
    "adapters": "a LoRA adapter to evaluate (repeat the flag for several; all go on one plot)",
    "adapter_weight": "strength every adapter is applied with",
    "base": "evaluate the base model too (--no-base to leave it out)",
    "negative_prompt": "the 'negative prompt only' method's negative prompt (default: the concept; '' leaves it out)",
    "detector": "concept detector for DSR (default: the preset's): nudenet, colour:<name>",
    "prompts_file": "direct prompts: .txt (one a line) or .csv with a 'prompt' column, e.g. I2P (default: preset)",
    "attack_prompts_file": "prompt attack: paraphrases / synonyms, .txt or .csv (default: the preset's)",
    "unrelated_prompts_file": "prior-preservation prompts, e.g. MS-COCO captions, .txt or .csv (default: preset)",
    "attacks": "comma-separated: direct, prompts, concept_inversion, ring_a_bell, unlearndiffatk (default: all; "
               "the last three on SD 1.x/2.x, SDXL and SD3, not Flux)",
    "images_per_prompt": "images (seeds) per prompt",
    "max_prompts": "use at most this many prompts of each set (0: all)",
    "sample_steps": "sampling steps (default: the preset's)",
    "guidance": "classifier-free guidance scale (default: the preset's)",
    "seed": "first seed; image j of a prompt list uses seed + j for every method",
    "pairs": "pair dataset whose unsafe images concept inversion and unlearndiffatk learn on "
             "(default: base-model images)",
    "ci_steps": "concept inversion: optimisation steps",
    "ci_lr": "concept inversion: Adam learning rate (paper: 5e-3)",
    "ci_batch": "concept inversion: batch size (paper: 4)",
    "ci_images": "concept inversion and unlearndiffatk: number of concept images to learn on",
    "ci_template": "concept inversion: prompt template with {} for the token (default: the concept word replaced)",
    "rab_strength": "ring-a-bell: strength eta of the concept direction added to the neutral prompt",
    "rab_length": "ring-a-bell: tokens in a searched prompt",
    "rab_population": "ring-a-bell: genetic search population",
    "rab_generations": "ring-a-bell: genetic search generations",
    "udatk_tokens": "unlearndiffatk: adversarial tokens prepended to each direct prompt (paper: 5)",
    "udatk_steps": "unlearndiffatk: optimisation steps per direct prompt",
    "udatk_lr": "unlearndiffatk: Adam learning rate of the continuous token vectors",
    "udatk_batch": "unlearndiffatk: (image, noise, t) draws per step",
    "udatk_check_every": "unlearndiffatk: write the tokens out every this many steps (and after the last) and read "
                         "their images with the detector, the official attack's classifier in the loop; each check "
                         "generates the direct prompts' images once more",
    "lpips_net": "LPIPS network: alex (default), vgg, squeeze",
    "lpips_backbone": "pretrained (the real metric; downloads once) or random (offline, not comparable)",
    "fid_features": "FID of each method's unrelated-prompt images (off unless given): inception (the published "
                    "metric's network; needs torch-fidelity and its weights) or testbed (the test bed's own "
                    "network: a test-bed FID, not comparable with published FID)",
    "fid_reference": "FID reference: a folder of real images, e.g. MS-COCO val (default: test-bed renders of the "
                     "prompts for testbed features, else the base model's images of the same prompts)",
    "fid_inception_weights": "torch-fidelity's Inception v3 weights file (weights-inception-2015-12-05-6726825d.pth)"
                             " for offline use (default: TORCH_HOME's copy, downloaded once)",
    "clip_model": "CLIP score of each method's unrelated-prompt images against their prompts (off unless given): "
                  "a local folder holding a CLIP model and its processor, e.g. openai/clip-vit-large-patch14",
    "grid_columns": "images per row in the grids",
    "out": "report folder: report.json, plot.png, grid_*.png",
    "overwrite": "replace the report, plot and grids of an earlier evaluation in --out (otherwise refused)",
    "batch_size": "images generated per batch",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "mixed_precision": "auto (bf16/fp16 on a GPU, fp32 on the CPU), no, fp16 or bf16",
}


MAX_ADAPTER_WEIGHT = 10.0  # the tab's Compare stops there too: the sliders end at 2

@dataclass
class EvalConfig:
    """One evaluation run. None means "the preset's value"."""

    model: str = "testbed"
    config_dir: str | None = None
    drop_t5: bool = False  # SD3: load without T5 (diffusers' text_encoder_3=None), for small cards
    preset: str = "testbed-red"
    concept: str | None = None
    adapters: tuple[str, ...] = ()
    adapter_weight: float = 1.0
    base: bool = True  # evaluate the base model too
    negative_prompt: str | None = None  # the "negative prompt only" method; None: the concept's name, "": leave out
    detector: str | None = None
    prompts_file: str | None = None  # direct prompts (.txt / .csv); default: the concept's unsafe prompts
    attack_prompts_file: str | None = None  # prompt attack; default: the preset's attack prompts
    unrelated_prompts_file: str | None = None  # prior preservation; default: the preset's unrelated prompts
    attacks: tuple[str, ...] = ATTACKS
    images_per_prompt: int = 4
    max_prompts: int = 0  # 0: every prompt of each set
    sample_steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    pairs: str | None = None  # concept inversion learns on this pair dataset's unsafe images (else: generated)
    ci_steps: int = 300
    ci_lr: float = 5e-3
    ci_batch: int = 4
    ci_images: int = 16
    ci_template: str | None = None
    rab_strength: float = 3.0
    rab_length: int = 8
    rab_population: int = 64
    rab_generations: int = 60
    udatk_tokens: int = 5
    udatk_steps: int = 100
    udatk_lr: float = 1e-2
    udatk_batch: int = 4
    udatk_check_every: int = 20  # the official code reads its classifier after every 40 steps
    lpips_net: str = "alex"
    lpips_backbone: str = "pretrained"
    fid_features: str | None = None  # None: no FID (generation-heavy runs and the tests stay as fast as before)
    fid_reference: str | None = None  # a folder of real images; None: test-bed renders, or the base's images
    fid_inception_weights: str | None = None
    clip_model: str | None = None  # a local CLIP folder; None: no CLIP score
    grid_columns: int = 8
    out: str = "duo_eval"
    overwrite: bool = False  # replace report.json, plot.png and grids already in out
    batch_size: int = 16
    device: str = "auto"
    mixed_precision: str = "auto"  # half-precision sampling on a GPU, fp32 on the CPU

    def validate(self) -> None:
        from ..runtime import RuntimeConfig

        RuntimeConfig(self.device, self.mixed_precision).validate()
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown or not self.attacks:
            raise UserError(f"unknown attack(s) {', '.join(unknown) or '(none given)'}; attacks: {', '.join(ATTACKS)}")
        for name in ("images_per_prompt", "ci_steps", "ci_batch", "ci_images", "rab_length", "rab_population",
                     "rab_generations", "udatk_tokens", "udatk_steps", "udatk_batch", "udatk_check_every", "batch_size",
                     "grid_columns"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        # sample_steps None is the preset's value; 0 is not, and would have silently become it
        if self.sample_steps is not None and not (isinstance(self.sample_steps, int) and self.sample_steps > 0):
            raise UserError(f"sample_steps must be a positive integer, got {self.sample_steps!r}")
        check_sample_steps("sample_steps", self.sample_steps)
        for name in ("images_per_prompt", "ci_batch", "ci_images", "udatk_batch", "batch_size"):
            check_batch(name, getattr(self, name))
        # rab_strength is η in target = E(neutral) + η·(concept direction): 0 or less does not point at the concept
        for name in ("ci_lr", "udatk_lr", "adapter_weight", "rab_strength"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UserError(f"{name} must be a positive number, got {value!r}")
        if self.adapter_weight > MAX_ADAPTER_WEIGHT:  # far past it an adapter draws noise, which reads as "erased"
            raise UserError(f"adapter_weight must be at most {MAX_ADAPTER_WEIGHT:g}, got {self.adapter_weight!r}")
        # NaN would reach report.json, which JSON cannot hold; guidance 0 (no guidance) is allowed, as for pairs
        if self.guidance is not None and not (isinstance(self.guidance, (int, float)) and math.isfinite(self.guidance)
                                              and self.guidance >= 0):
            raise UserError(f"guidance must be zero or positive, got {self.guidance!r}")
        check_seed("seed", self.seed)  # concept inversion's images add 10_000_000, still within torch's 2**64 - 1
        if not str(self.out).strip():  # '' would put the report and grids in the current folder
            raise UserError(f"out must name the report folder (--out DIR), got {self.out!r}")
        if self.udatk_tokens > SD_PROMPT_TOKENS - 3:  # a smaller text encoder is checked once it is loaded
            raise UserError(f"udatk_tokens must leave room for the prompt: at most {SD_PROMPT_TOKENS - 3} of SD's "
                            f"{SD_PROMPT_TOKENS} prompt tokens, got {self.udatk_tokens}")
        if self.max_prompts < 0:
            raise UserError(f"max_prompts must be 0 (all) or positive, got {self.max_prompts}")
        if self.lpips_backbone not in ("pretrained", "random"):
            raise UserError(f"lpips_backbone must be pretrained or random, got {self.lpips_backbone!r}")
        if self.lpips_net not in ("alex", "vgg", "squeeze"):
            raise UserError(f"lpips_net must be alex, vgg or squeeze, got {self.lpips_net!r}")
        if self.fid_features is not None and self.fid_features not in FID_FEATURES:
            raise UserError(f"fid_features must be one of {', '.join(FID_FEATURES)}, got {self.fid_features!r}")
        if (self.fid_reference or self.fid_inception_weights) and not self.fid_features:
            raise UserError("--fid-reference / --fid-inception-weights set up FID: give --fid-features too")
        if self.fid_inception_weights and self.fid_features != "inception":
            raise UserError("--fid-inception-weights is for --fid-features inception")
        if self.ci_template is not None and not _one_token_field(self.ci_template):
            raise UserError(f"ci_template must hold {{}} exactly once, where the learnt token goes, and no other "
                            f"{{...}} field (write {{{{ or }}}} for a brace), got {self.ci_template!r}")
        if not self.base and self.negative_prompt == "" and not self.adapters:
            raise UserError("nothing to evaluate: give --adapter, or keep the base model / negative prompt")


def _one_token_field(template: str) -> bool:
    """True when template.format(token) fills exactly one bare {} and nothing else: "{x}" or a second "{}" would
    fail with KeyError / IndexError only once concept inversion runs."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError:  # a lone { or }
        return False
    return fields == [("", "", None)]


@dataclass
class Plan:
    """Everything resolved before the model loads, so bad input fails fast."""
    concept: str
    methods: list[Method]
    direct: list[str]
    attack_prompts: list[str] | None
    attack_prompts_source: str | None
    unrelated: list[str]
    free_prompts: list[str]
    detector_spec: str
    steps: int
    guidance: float
    settings: dict = field(default_factory=dict)


def plan(cfg: EvalConfig) -> Plan:
    from ..presets import get_preset

    cfg.validate()
    preset = get_preset(cfg.preset)
    concepts = preset.concepts_named(cfg.concept)
    if len(concepts) > 1:
        raise UserError(f"preset {preset.name} has concepts {', '.join(c.name for c in concepts)}: "
                        "evaluate one at a time with --concept")
    concept = concepts[0] if concepts else None
    name = cfg.concept or (concept.name if concept else "")
    cap = cfg.max_prompts or None

    def unique(prompts):
        return list(dict.fromkeys(prompts))[:cap]

    if cfg.prompts_file:
        direct = unique(load_prompts(cfg.prompts_file))
    elif concept:
        direct = unique(concept.unsafe_prompts)
    else:
        raise UserError(f"preset {preset.name} has no prompts of its own: give --prompts-file (.txt or .csv)")
    if not name:
        raise UserError("name the concept with --concept (it is the negative prompt and the word attacks replace)")
    attack_prompts, source = None, None
    if cfg.attack_prompts_file:
        attack_prompts, source = unique(load_prompts(cfg.attack_prompts_file)), cfg.attack_prompts_file
    elif getattr(preset, "attack_prompts", ()):
        attack_prompts, source = unique(preset.attack_prompts), f"preset {preset.name}"
    unrelated = (unique(load_prompts(cfg.unrelated_prompts_file)) if cfg.unrelated_prompts_file
                 else unique(preset.unrelated_prompts))
    if not unrelated:
        raise UserError(f"no unrelated prompts for prior preservation: preset {preset.name} has none; "
                        "give --unrelated-prompts-file (e.g. MS-COCO captions, one a line)")
    from .quality import check as check_quality

    check_quality(cfg.fid_features, cfg.fid_reference, cfg.clip_model, unrelated, cfg.images_per_prompt,
                  cfg.fid_inception_weights)
    free = list(dict.fromkeys(concept.safe_prompts)) if concept else []
    if "ring_a_bell" in cfg.attacks and not free:
        raise UserError("the ring_a_bell attack needs concept-free prompts (a preset concept's safe prompts); "
                        "leave it out with --attacks direct,prompts,concept_inversion")
    detector = cfg.detector or preset.detector
    if detector is None or detector.strip().lower() in ("", "none"):  # any spelling make_detector takes as none
        raise UserError(f"DSR needs a detector and preset {preset.name} has none: pass --detector "
                        "(nudenet, colour:<name>)")
    from ..detectors import make_detector  # fail on an unknown name now, not after generating

    if not detector.startswith("nudenet"):
        make_detector(detector)
    methods: list[Method] = []
    if cfg.base:
        methods.append(Method("base", BASE))
    negative = name if cfg.negative_prompt is None else cfg.negative_prompt
    if negative:
        methods.append(Method("negative prompt", NEGATIVE, negative_prompt=negative))
    taken = {m.name for m in methods}
    methods += [adapter_method(a, cfg.adapter_weight, taken) for a in cfg.adapters]
    if cfg.pairs:
        from ..pair_dataset import read_pairs

        read_pairs(cfg.pairs)
    return Plan(name, methods, direct, attack_prompts, source, unrelated, free, detector,
                cfg.sample_steps if cfg.sample_steps is not None else preset.sample_steps,
                cfg.guidance if cfg.guidance is not None else preset.guidance)


def report_files(cfg: EvalConfig, p: Plan) -> list[Path]:
    """Every file evaluate() writes into cfg.out: the report, the plot, a grid per image set."""
    grids = ["unrelated", *(a for a in cfg.attacks if a != "prompts" or p.attack_prompts)]
    out = Path(cfg.out)
    return [out / "report.json", out / "plot.png", *(out / f"grid_{name}.png" for name in grids)]


def _check_out(cfg: EvalConfig, p: Plan) -> None:
    """An earlier evaluation's files are not replaced unless asked for, and that is said before any model loads."""
    folders = [f.name for f in report_files(cfg, p) if f.is_dir()]
    if folders:  # not even --overwrite replaces a folder: said now, not after the evaluation
        raise UserError(f"{', '.join(folders)} in {cfg.out} is a folder, and the evaluation writes a file of that "
                        "name; move it or choose another --out")
    taken = [f.name for f in report_files(cfg, p) if f.exists()]
    if taken and not cfg.overwrite:
        raise UserError(f"{cfg.out} already holds {', '.join(taken)}; choose another --out or pass --overwrite "
                        "to replace them")


TOKEN_ATTACKS = ("concept_inversion", "ring_a_bell", "unlearndiffatk")  # on the CLIP encoders' token embeddings
# backpropagate through the text encoders and the denoiser together: both must be on the device at once
WHITE_BOX_ATTACKS = ("concept_inversion", "unlearndiffatk")


def _check_room_for_white_box(cfg: EvalConfig, pipe, rt) -> None:
    """A model the device cannot hold whole samples under diffusers' model offload, which moves each model off the
    device while the next one runs; a white-box attack's backward pass needs the encoders' weights where they ran,
    so those attacks are refused here, in one line, before anything is generated."""
    from ..runtime import bytes_to_place, free_memory_bytes, holds_whole

    asked = [a for a in cfg.attacks if a in WHITE_BOX_ATTACKS]
    if not asked or holds_whole(pipe, rt):
        return
    free = free_memory_bytes(rt.device) or 0
    keep = ",".join(a for a in cfg.attacks if a not in WHITE_BOX_ATTACKS) or "direct,prompts"
    raise UserError(f"the {', '.join(asked)} attack(s) backpropagate through the whole model, and {rt.device} cannot "
                    f"hold it ({bytes_to_place(pipe, rt) / 2**30:.1f} GiB to place, {free / 2**30:.1f} GiB free): "
                    f"run with --attacks {keep}, or on a larger card")


def _check_family_attacks(cfg: EvalConfig, family_name: str) -> None:
    """Concept Inversion, Ring-A-Bell and UnlearnDiffAtk run on every family with CLIP encoders that carry the
    prompt's tokens (SD 1.x/2.x, SDXL, SD3); refused, before anything is generated, for any other (Flux)."""
    from ..families import get_family

    asked = [a for a in cfg.attacks if a in TOKEN_ATTACKS]
    if asked and not get_family(family_name).token_encoders:
        keep = ",".join(a for a in cfg.attacks if a not in TOKEN_ATTACKS) or "direct,prompts"
        raise UserError(f"the {', '.join(asked)} attack(s) optimise CLIP token embeddings, and {cfg.model} is "
                        f"{family_name.upper()}, whose prompt tokens go through T5: run with --attacks {keep}")


def generate(pipe, prompts: list[str], per_prompt: int, seed: int, steps: int, guidance: float,
             negative_prompt: str | None = None, batch: int = 16) -> list:
    """per_prompt images of each prompt; image j of the whole list uses seed + j, so every method sees the same
    noise for the same (prompt, copy)."""
    from ..previews import generate_images

    flat = [p for p in prompts for _ in range(per_prompt)]
    images = []
    for i in range(0, len(flat), batch):
        images += generate_images(pipe, flat[i:i + batch], seed + i, steps, guidance, negative_prompt)
    return images


def _ci_training_set(cfg: EvalConfig, p: Plan, pipe, progress) -> tuple[list, list[str], str]:
    """(images, prompts, where from): the pair dataset's unsafe images, else base-model images of the prompts."""
    if cfg.pairs:
        from ..pair_dataset import open_rgb, read_pairs

        records = read_pairs(cfg.pairs)[:cfg.ci_images]
        images = [open_rgb(Path(cfg.pairs) / r.unsafe) for r in records]
        return images, [r.unsafe_prompt or p.direct[0] for r in records], f"pairs {cfg.pairs}"
    report(progress, ProgressEvent("eval", message=f"white-box attacks: generating {cfg.ci_images} concept images"))
    prompts = [p.direct[i % len(p.direct)] for i in range(cfg.ci_images)]
    base = Method("base", BASE)
    with activated(pipe, base):
        images = generate(pipe, prompts, 1, cfg.seed + 10_000_000, p.steps, p.guidance, batch=cfg.batch_size)
    return images, prompts, "generated by the base model"


def evaluate(cfg: EvalConfig, progress: ProgressCallback | None = None, model=None) -> dict:
    """Run the evaluation and write report.json, plot.png and grids into cfg.out; returns the report.

    A `model` passed in is left changed (the adapters loaded and on, the white-box attacks' tokens added): load
    a fresh one for anything that must see the base model, such as making pairs."""
    from ..detectors import make_detector
    from ..families import get_family
    from ..models import detect_family, load_model, model_options, refuse_inside_model, resolve_model_path
    from ..previews import save_png
    from .concept_inversion import concept_inversion, token_prompts
    from .dsr import any_found, defense_success_rate
    from .preservation import build_lpips, prior_preservation
    from .report import image_grid, plot, write_json
    from .ring_a_bell import ring_a_bell
    from .unlearn_diff_atk import check_room, check_steps, unlearn_diff_atk

    from ..runtime import RuntimeConfig, placed_for_sampling, resolve

    started = time.time()
    p = plan(cfg)
    _check_out(cfg, p)
    _check_family_attacks(cfg, model.family if model else detect_family(resolve_model_path(cfg.model)))
    rt = resolve(RuntimeConfig(cfg.device, cfg.mixed_precision))
    detector = make_detector(p.detector_spec)
    metric = build_lpips(cfg.lpips_net, cfg.lpips_backbone)
    quality = None
    if cfg.fid_features or cfg.clip_model:  # built before anything is written: missing weights fail first
        from .quality import Quality

        quality = Quality(cfg.fid_features, cfg.fid_reference, cfg.fid_inception_weights, cfg.clip_model,
                          cfg.batch_size, rt.device)
    out = Path(cfg.out)
    # a read-only folder is said now, not after the whole evaluation; the folder itself is made with the report
    check_folder_writable(out)
    model = model or load_model(cfg.model, cfg.config_dir, options=model_options(cfg.drop_t5))
    refuse_inside_model(out, model.source)  # a report is files written too: never among the model's
    pipe = model.pipe
    family = get_family(model.family)
    if "unlearndiffatk" in cfg.attacks:
        for tokenizer, _ in family.clip_encoders(pipe):
            check_room(tokenizer, cfg.udatk_tokens)
    _check_room_for_white_box(cfg, pipe, rt)
    # adapters first: diffusers re-hooks a pipeline under its model offload when it loads one, on its own device
    load_adapters(pipe, p.methods)
    metric.to(rt.device)
    # whole on the device where it fits; else one model there at a time, the text encoders left on the CPU after
    with placed_for_sampling(pipe, rt, wait_after=family.text_modules(pipe)):
        report(progress, ProgressEvent("eval", message=f"{model.name}: {', '.join(m.name for m in p.methods)}"))

        def gen(prompts, negative):
            return generate(pipe, prompts, cfg.images_per_prompt, cfg.seed, p.steps, p.guidance, negative,
                            cfg.batch_size)

        attacks: dict[str, AttackPrompts] = {}
        skipped: dict[str, str] = {}
        if "direct" in cfg.attacks:
            source = cfg.prompts_file or f"preset {cfg.preset}"
            attacks["direct"] = AttackPrompts("direct", p.direct, {"source": source})
        if "prompts" in cfg.attacks:
            if p.attack_prompts:
                attacks["prompts"] = prompt_attack(p.attack_prompts)
                attacks["prompts"].settings = {"source": p.attack_prompts_source}
            else:
                skipped["prompts"] = "no attack prompts: give --attack-prompts-file"
        if "ring_a_bell" in cfg.attacks:
            report(progress, ProgressEvent("eval", message="ring-a-bell: searching prompts"))
            with activated(pipe, Method("base", BASE)):  # black-box: the base model's text encoder only
                attacks["ring_a_bell"] = ring_a_bell(
                    pipe, p.direct, p.free_prompts, p.free_prompts[:cfg.max_prompts or None], cfg.rab_strength,
                    cfg.rab_length, cfg.rab_population, cfg.rab_generations, exclude_words=p.concept.split(),
                    seed=cfg.seed, progress=progress, family=family)
        ci_set = None  # the concept's images the white-box attacks learn on
        if {"concept_inversion", "unlearndiffatk"} & set(cfg.attacks):
            ci_set = _ci_training_set(cfg, p, pipe, progress)

        results: dict[str, dict] = {}
        inversions: dict[str, dict] = {}
        base_token = None
        adversarial: dict[str, list[dict]] = {}
        base_adversarial = None
        with activated(pipe, Method("base", BASE)):  # the reference of prior preservation
            base_unrelated = gen(p.unrelated, None)
        unrelated_per_image = [q for q in p.unrelated for _ in range(cfg.images_per_prompt)]  # as generate() lays out
        if quality:
            quality.set_reference(base_unrelated, unrelated_per_image, cfg.seed)
            caveat = quality.fid is not None and quality.few_images(len(unrelated_per_image))
            if caveat:
                report(progress, ProgressEvent("eval", message=f"warning: {caveat}"))
        grids: dict[str, dict[str, list]] = {"unrelated": {"base (reference)": base_unrelated}}
        for k, m in enumerate(p.methods):
            report(progress, ProgressEvent("eval", k, len(p.methods), f"method {m.name}"))
            res: dict = {"attacks": {}}
            with activated(pipe, m) as negative:
                images = base_unrelated if m.kind == BASE else gen(p.unrelated, negative)
                res["preservation"] = prior_preservation(metric, base_unrelated, images, cfg.lpips_net,
                                                         cfg.lpips_backbone).as_dict()
                if quality:
                    res["quality"] = quality.measure(images, unrelated_per_image)
                if m.kind != BASE:
                    grids["unrelated"][m.name] = images
                read: dict = {}
                for name, attack in attacks.items():
                    imgs = gen(attack.prompts, negative)
                    read[name] = defense_success_rate(imgs, detector)
                    res["attacks"][name] = read[name].as_dict() | {"n_prompts": len(attack.prompts)}
                    grids.setdefault(name, {})[m.name] = imgs
                if "concept_inversion" in cfg.attacks:
                    images_ci, prompts_ci, _ = ci_set
                    if m.same_model_as_base and base_token is not None:
                        token, inv = base_token
                    else:
                        token = f"<ci-{k}>"
                        report(progress, ProgressEvent("eval", message=f"concept inversion against {m.name}"))
                        inv = concept_inversion(pipe, images_ci, token_prompts(prompts_ci, p.concept.split(), token,
                                                                               cfg.ci_template),
                                                token, cfg.ci_steps, cfg.ci_lr, cfg.ci_batch, cfg.seed,
                                                init_word=None, progress=progress, family=family).as_dict()
                        if m.same_model_as_base:
                            base_token = (token, inv)
                    inversions[m.name] = inv
                    ci_prompts = token_prompts(p.direct, p.concept.split(), token, cfg.ci_template)
                    imgs = gen(ci_prompts, negative)
                    res["attacks"]["concept_inversion"] = (defense_success_rate(imgs, detector).as_dict()
                                                           | {"n_prompts": len(ci_prompts), "prompts": ci_prompts,
                                                              "token": token})
                    grids.setdefault("concept_inversion", {})[m.name] = imgs
                if "unlearndiffatk" in cfg.attacks:
                    # the negative-prompt method denoises with the base model's weights: the same prompts attack it
                    if m.same_model_as_base and base_adversarial is not None:
                        found = base_adversarial
                    else:
                        report(progress, ProgressEvent("eval", message=f"unlearndiffatk against {m.name}"))
                        found = unlearn_diff_atk(pipe, ci_set[0], ci_set[1], p.direct, cfg.udatk_tokens,
                                                 cfg.udatk_steps, cfg.udatk_lr, cfg.udatk_batch, cfg.seed,
                                                 progress=progress, family=family,
                                                 check_every=cfg.udatk_check_every)
                        if m.same_model_as_base:
                            base_adversarial = found
                    adversarial[m.name] = [f.as_dict() for f in found]
                    # the loss picks the tokens; only a detector can tell which prompt draws the concept: as the
                    # official attack stops at the first image its classifier flags, a slot is the attack's if the
                    # direct prompt or the prompt at any check shows the concept on that slot's seed
                    direct_imgs = grids["direct"][m.name] if "direct" in read else gen(p.direct, negative)
                    direct = read.get("direct") or defense_success_rate(direct_imgs, detector)
                    check_imgs = [gen([f.checks[c] for f in found], negative) for c in range(len(found[0].checks))]
                    checks = [defense_success_rate(imgs, detector) for imgs in check_imgs]
                    # the found prompt is the last check's where its tokens were kept, else the direct prompt: the
                    # same prompt on the same seed, so its images are already drawn
                    per_prompt = cfg.images_per_prompt
                    imgs = [(check_imgs[-1] if found[s // per_prompt].kept else direct_imgs)[s]
                            for s in range(len(direct_imgs))]
                    alone = defense_success_rate(imgs, detector)
                    res["attacks"]["unlearndiffatk"] = (any_found(direct, *checks).as_dict()
                                                        | {"n_prompts": len(found), "prompts": [f.found for f in found],
                                                           "found_prompts_alone": alone.as_dict(),
                                                           "checks": [c.as_dict() for c in checks]})
                    grids.setdefault("unlearndiffatk", {})[m.name] = imgs
            results[m.name] = res

    files = {"report": str(out / "report.json"), "plot": str(out / "plot.png"),
             "grids": {name: str(out / f"grid_{name}.png") for name in grids}}
    attack_info = {n: a.as_dict() for n, a in attacks.items()}
    if "concept_inversion" in cfg.attacks:
        attack_info["concept_inversion"] = {
            "name": "concept_inversion", "settings": {
                "steps": cfg.ci_steps, "lr": cfg.ci_lr, "batch": cfg.ci_batch, "optimizer": "Adam",
                "images": len(ci_set[0]), "images_from": ci_set[2], "template": cfg.ci_template,
                "training_prompts": sorted(set(ci_set[1]))},
            "info": {"per_method": inversions}}
    if "unlearndiffatk" in cfg.attacks:
        attack_info["unlearndiffatk"] = {
            "name": "unlearndiffatk", "settings": {
                "tokens": cfg.udatk_tokens, "placement": "prefix", "steps": cfg.udatk_steps, "lr": cfg.udatk_lr,
                "checks_after_steps": check_steps(cfg.udatk_steps, cfg.udatk_check_every),
                "batch": cfg.udatk_batch, "optimizer": "Adam",
                "projection": "nearest word token (cosine), straight-through gradient",
                "loss": f"denoising MSE, {family.noise_process(pipe).target_name} target",
                "images": len(ci_set[0]), "images_from": ci_set[2], "training_prompts": sorted(set(ci_set[1]))},
            "info": {"per_method": adversarial}}
    result = {
        "format": "duo-unlearn eval report 1",
        "model": {"name": model.name, "family": model.family, "source": str(model.source)},
        "preset": cfg.preset, "concept": p.concept, "detector": p.detector_spec,
        "sampling": {"steps": p.steps, "guidance": p.guidance, "images_per_prompt": cfg.images_per_prompt,
                     "seed": cfg.seed, "scheduler": type(pipe.scheduler).__name__},
        "unrelated_prompts": p.unrelated,
        "settings": asdict(cfg),
        "methods": [m.as_dict() for m in p.methods],
        "attacks": attack_info, "skipped_attacks": skipped,
        "results": results,
        **({"quality": quality.settings()} if quality else {}),
        "files": files,
        "seconds": round(time.time() - started, 1),
    }
    # an --overwrite that fails part way keeps the earlier report whole; without it, one that appeared is kept too
    with staged_files(out, replace=cfg.overwrite) as stage:
        for name, rows in grids.items():
            save_png(image_grid(rows, columns=cfg.grid_columns), stage / f"grid_{name}.png")
        plot(result, stage / "plot.png", f"{model.name} / {p.concept}: DSR vs prior preservation")
        write_json(result, stage / "report.json")
    report(progress, ProgressEvent("done", len(p.methods), len(p.methods), f"report in {out}"))
    return result


def summary_table(result: dict) -> str:
    """A markdown table: one row per method, DSR per attack, 1 − LPIPS, and FID / CLIP score when measured."""
    attacks = list(dict.fromkeys(a for r in result["results"].values() for a in r["attacks"]))
    settings = result.get("quality", {})
    fid = settings.get("fid")
    fid_title = fid and ("test-bed FID" if fid["features"] == "testbed" else
                         "FID vs base" if fid["reference"]["kind"] == "base model" else "FID")
    quality = [(key, title) for key, title in (("fid", fid_title), ("clip_score", "CLIP score")) if key in settings]
    titles = ["method", *(f"DSR {a}" for a in attacks), "1 − LPIPS", *(title for _, title in quality)]
    rows = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for name, r in result["results"].items():
        cells = [f"{r['attacks'][a]['dsr']:.3f}" if a in r["attacks"] else "–" for a in attacks]
        cells.append(f"{r['preservation']['one_minus_lpips']:.3f}")
        cells += [f"{r['quality'][key]['value']:.2f}" if key in r.get("quality", {}) else "–" for key, _ in quality]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
