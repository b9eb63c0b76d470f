"""The DUO tab: "Unlearn concept" and "Compare adapters", built by one function for every host.

`TabController` holds the behaviour (validation, the background job, polling, comparison) and knows no gradio
component, so tests drive it directly; `build_tab(backend)` lays out the components and wires them to it. The
layout uses only what gradio 3.41.2 (A1111), 4.40.0 (Forge) and the current release all accept.
"""
from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..trainer.concept_directions import AUTO, parse_setting, valid_count
from ..trainer.errors import UserError
from ..trainer.lr_schedule import SCHEDULES
from ..trainer.pairs_folder import pairs_folder
from .backends import family_label, testbeds_label
from .jobs import Busy, format_seconds
from .names import adapter_path, sanitise_name

MAX_STACK = 4  # adapter slots in Compare (the violence preset makes four)
NONE = "(none)"
ALL = "(all concepts)"
POLL_SECONDS = 0.5


def _esc(text: str) -> str:
    """Text shown in a Markdown component: no HTML from file names or prompts."""
    return html.escape(text, quote=False)


def _lines(text: str | None) -> tuple[str, ...]:
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


SEED_MAX = 2**32 - 1  # as A1111's seed field; the pair images derive their own seeds from it
# Beyond these a click would start a job of days or a model that cannot fit; the CLI keeps its own limits.
MOST_PAIRS, MOST_STEPS, MOST_RANK, MOST_BATCH, MOST_RETAIN = 4096, 100_000, 1024, 1024, 100_000


def _int(value, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a whole number, got {value!r}") from None
    if not f.is_integer() or f < minimum:
        raise UserError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    if maximum is not None and f > maximum:
        raise UserError(f"{name} must be a whole number from {minimum} to {maximum}, got {value!r}")
    return int(f)


def _float(value, name: str, positive: bool = True) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f):  # "1e400" parses as inf
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if positive and f <= 0:
        raise UserError(f"{name} must be a positive number, got {value!r}")
    return f


def _refuse_other_family(chosen, family: str | None) -> None:
    """An SD 1.x adapter on an SDXL model loads none of its modules: the images would be the base model's, with
    only a note to say why."""
    from ..trainer.families import loads_on

    for adapter, _ in chosen:
        recorded = adapter.duo.get("family")
        if family and recorded and not loads_on(recorded, family):
            raise UserError(f"{adapter.name} was trained for {family_label(recorded)}, and this model is "
                            f"{family_label(family)}: pick a model of its family")


def _lr_schedule(name, warmup, steps: int) -> tuple[str, int]:
    """The schedule and warm-up boxes, checked in the tab's words (the trainer's messages name CLI settings)."""
    name = (name or "").strip() or "constant"
    if name not in SCHEDULES:
        raise UserError(f"Learning-rate schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")
    warmup = _int(warmup or 0, "Warm-up steps", 0, MOST_STEPS)  # gradio sends an emptied Number as None or 0
    if warmup and name == "constant":
        raise UserError("Warm-up steps need a learning-rate schedule with a warm-up (any but constant), or set "
                        "them to 0")
    if warmup >= steps:
        raise UserError(f"Warm-up steps ({warmup}) must be fewer than Steps ({steps})")
    return name, warmup


def _optional(value, parse):
    """A text field that may be left blank (the preset's value): None, else the parsed value."""
    text = "" if value is None else str(value).strip()
    return None if not text else parse(text)


def _directions_count(text: str) -> int | float | str:
    """The Concept directions field: a whole number, a share of each layer's width, or auto."""
    setting = parse_setting(text)
    if setting is not None and valid_count(setting):
        return setting
    raise UserError(f"Concept directions must be {AUTO}, a whole number of at least 0 or a share between 0 and 1 "
                    f"(of each layer's inputs), got {text!r}")


def _optional_weight(value, name: str, zero: str = "") -> float | None:
    """A weight field: blank (the preset's value), 0 (`zero` says what that does) or positive."""
    w = _optional(value, lambda v: _float(v, name, positive=False))
    if w is not None and w < 0:
        raise UserError(f"{name} must be 0{f' ({zero})' if zero else ''} or positive, got {value!r}")
    return w


def _open_image(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _stack_vertically(images):
    from PIL import Image

    if len(images) == 1:
        return images[0]
    width = max(im.width for im in images)
    sheet = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        sheet.paste(im, (0, y))
        y += im.height
    return sheet


def for_display(image, target: int = 256):
    """Small models make small pictures: enlarge them by a whole factor, pixels kept sharp."""
    from PIL import Image

    side = max(image.size)
    if side >= target:
        return image
    k = -(-target // side)
    return image.resize((image.width * k, image.height * k), Image.NEAREST)


def progress_bar(fraction: float, state: str = "running") -> str:
    colour = {"running": "#3b82f6", "done": "#16a34a", "failed": "#dc2626", "cancelled": "#9ca3af"}.get(state,
                                                                                                         "#3b82f6")
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div id="duo-progress" data-state="{state}" style="width:100%;height:10px;background:#e5e7eb;'
            f'border-radius:5px;overflow:hidden"><div style="width:{pct:.1f}%;height:100%;background:{colour}">'
            f'</div></div>')


PRECISIONS = ["auto", "no", "fp16", "bf16"]
CHECKPOINTING = ["auto", "on", "off"]


@dataclass
class Request:
    """A validated "Unlearn concept" click."""
    cfg: object  # UnlearnConfig
    plans: list
    outputs: list[Path]
    label: str


class TabController:
    def __init__(self, backend):
        from ..trainer.presets import load_presets

        self.backend = backend
        self.presets = load_presets()

    # -- presets --
    def preset_names(self) -> list[str]:
        return list(self.presets)

    def default_preset(self) -> str:
        return "testbed-red" if "testbed-red" in self.presets else next(iter(self.presets))

    def concept_choices(self, preset: str) -> list[str]:
        p = self.presets.get(preset)
        if p is None or not p.concepts:
            return ["custom"]
        names = [c.name for c in p.concepts]
        return names if len(names) == 1 else [ALL, *names]

    def preset_fields(self, preset: str, concept: str | None = None):
        """(concept choices, concept, unsafe text, safe text, pairs, beta, description) for a preset."""
        p = self.presets.get(preset)
        if p is None:
            raise UserError(f"no preset named {preset!r}")
        choices = self.concept_choices(preset)
        concept = concept if concept in choices else choices[0]
        unsafe, safe = self._preset_prompts(preset, concept)
        return choices, concept, "\n".join(unsafe), "\n".join(safe), p.num_pairs, p.beta, p.description

    def training_defaults(self, preset: str) -> tuple[int, int]:
        """(steps, rank): the preset's if it names them, else the CLI's (`duo-unlearn unlearn`) defaults."""
        from ..trainer.unlearn import UnlearnConfig

        p = self.presets.get(preset)
        base = UnlearnConfig()
        return getattr(p, "steps", None) or base.steps or 1000, getattr(p, "rank", None) or base.rank

    def _preset_prompts(self, preset: str, concept: str | None) -> tuple[tuple, tuple]:
        p = self.presets[preset]
        for c in p.concepts:
            if c.name == concept:
                return c.unsafe_prompts, c.safe_prompts
        return (), ()  # custom, or all concepts of a multi-concept preset (shown empty: the preset decides)

    # -- Unlearn concept --
    def build_request(self, model, preset, concept, unsafe_text, safe_text, num_pairs, beta, steps, rank, out_name,
                      strength=None, lr=None, seed=0, batch_pairs=4, detector="", preview=True, overwrite=False,
                      config_dir="", device="auto", mixed_precision="auto", gradient_checkpointing="auto",
                      resolution=0, micro_batch_pairs=0, retain_text="", num_retain="", lam_retain="",
                      lr_scheduler="constant", lr_warmup_steps=0, concept_directions="", close_concepts="",
                      close_weight="", twin_negative="") -> Request:
        """Every check that can fail before anything is written; UserError says what to fix."""
        from ..trainer.previews import preview_path
        from ..trainer.unlearn import UnlearnConfig, plan

        if preset not in self.presets:
            raise UserError(f"Choose a preset (got {preset!r})")
        unsafe, safe = _lines(unsafe_text), _lines(safe_text)
        p = self.presets[preset]
        concept = None if concept in (None, "", ALL) else concept
        preset_unsafe, preset_safe = self._preset_prompts(preset, concept)
        custom = bool(unsafe or safe) and (unsafe, safe) != (preset_unsafe, preset_safe)
        if not p.concepts or custom:
            if not unsafe:
                raise UserError("Unsafe prompts are empty: write at least one prompt that shows the concept to "
                                "unlearn, one per line")
            if not safe:
                raise UserError("Safe prompts are empty: write at least one prompt for the safe twin (the same "
                                "scene without the concept), one per line")
        name = sanitise_name(out_name)
        out = adapter_path(self.backend.lora_dir, name)
        model_spec = self.backend.model_for_training((model or "").strip() or self.backend.default_model())
        from ..trainer.models import resolve_model_path

        resolve_model_path(model_spec)  # a missing model is said now, not after the job started
        config = Path(config_dir.strip()).expanduser() if (config_dir or "").strip() else None
        if config is not None and config.is_file():
            raise UserError(f"Config folder {config_dir.strip()} is a file: give the folder that holds the model's "
                            "diffusers configs, or leave it blank")
        if config is not None and not config.exists():  # said on the click, not once the job loads the model
            raise UserError(f"Config folder {config_dir.strip()} does not exist: give the folder that holds the "
                            "model's diffusers configs, or leave it blank")
        try:  # the recipe may differ per family
            family = self.backend.model_family(model_spec)
        except UserError:  # not a model at all (a folder of something else, a text file): said now
            raise
        except Exception:  # noqa - anything else is the trainer's to refuse when it loads the model
            family = None
        retain = _lines(retain_text)
        n_retain = _optional(num_retain, lambda v: _int(v, "Retain images", 0, MOST_RETAIN))
        w_retain = _optional_weight(lam_retain, "Retain weight", "off")
        if n_retain and not (retain or p.retain_prompts):
            raise UserError("Retain images need retain prompts: write what must stay as it is under 'Retain "
                            "prompts', one per line (this preset has none), or leave Retain images blank")
        retain_images = n_retain if n_retain is not None else p.for_family(family).num_retain
        if w_retain and not retain_images:
            raise UserError("A retain weight needs retain images: set 'Retain images' above 0 (with this preset "
                            "and model there are none)")
        directions = _optional(concept_directions, _directions_count)
        close = tuple(w.strip() for w in (close_concepts or "").split(",") if w.strip())
        w_close = _optional_weight(close_weight, "Close weight")
        if directions and not retain_images:
            raise UserError("Concept directions need retain images (what the adapter must leave alone): set "
                            "'Retain images' above 0, or leave Concept directions blank")
        n_steps = _int(steps, "Steps", 1, MOST_STEPS)
        schedule, warmup = _lr_schedule(lr_scheduler, lr_warmup_steps, n_steps)
        cfg = UnlearnConfig(
            preset=preset, out=str(out), model=model_spec, config_dir=(config_dir or "").strip() or None,
            concept=concept if not custom else (concept or "custom"),
            unsafe_prompts=unsafe if custom or not p.concepts else (),
            safe_prompts=safe if custom or not p.concepts else (),
            num_pairs=_int(num_pairs, "Number of pairs", 1, MOST_PAIRS), beta=_float(beta, "β (beta)"),
            steps=n_steps, rank=_int(rank, "Rank", 1, MOST_RANK),
            strength=None if strength in (None, "", 0) else _float(strength, "SDEdit strength"),
            lr=None if lr in (None, "", 0) else _float(lr, "Learning rate"), seed=_int(seed, "Seed", 0, SEED_MAX),
            batch_pairs=_int(batch_pairs, "Pairs per step", 1, MOST_BATCH), detector=(detector or "").strip() or None,
            preview=bool(preview), device=(device or "").strip() or "auto",
            mixed_precision=(mixed_precision or "").strip() or "auto",
            gradient_checkpointing=(gradient_checkpointing or "").strip() or "auto",
            # gradio sends an emptied Number as 0: 0 means "the model's native size" / "as many as fit"
            resolution=None if resolution in (None, "", 0) else _int(resolution, "Resolution", 8),
            micro_batch_pairs=None if micro_batch_pairs in (None, "", 0)
            else _int(micro_batch_pairs, "Micro-batch pairs", 1, MOST_BATCH),
            retain_prompts=retain, num_retain=n_retain, lam_retain=w_retain, lr_scheduler=schedule,
            lr_warmup_steps=warmup, concept_directions=directions, close_concepts=close, close_weight=w_close,
            twin_negative=(twin_negative or "").strip() or None)
        from ..trainer.runtime import RuntimeConfig

        RuntimeConfig(cfg.device, cfg.mixed_precision, cfg.gradient_checkpointing).validate()
        _, plans = plan(cfg)  # the trainer's own checks (prompts, ranges, file name)
        cfg.pairs_dir = str(pairs_folder(self.backend.work_dir, name, model_spec, plans))
        _, plans = plan(cfg)
        outputs = [Path(pl.train.out) for pl in plans]
        for path in outputs:
            if path.resolve().parent != out.parent:
                raise UserError(f"{path} would be written outside the LoRA folder")
            if path.is_dir():
                raise UserError(f"{path.name} is a folder in the LoRA folder; choose another name")
            if path.exists() and not overwrite:
                raise UserError(f"An adapter named {path.name} already exists in the LoRA folder; choose another "
                                "name or tick 'Overwrite'")
            if cfg.preview and preview_path(path).exists() and not overwrite:
                raise UserError(f"A preview named {preview_path(path).name} already exists in the LoRA folder; "
                                "choose another name, tick 'Overwrite', or untick the preview")
        cfg.overwrite = bool(overwrite)  # the user ticked it knowingly; the trainer refuses otherwise
        on = self.backend.current_model_name(model_spec) or Path(model_spec).name
        on += f" — {family_label(family)}" if family else ""
        label = f"{name} ({', '.join(pl.concept.name for pl in plans)} on {on})"
        return Request(cfg, plans, outputs, label)

    def start(self, *inputs):
        """Validate and start the job; returns the Job (UserError / Busy for a message instead)."""
        if self.backend.runner.busy():  # before validation: a second click gets the clearest message
            raise Busy(f"A job is already running ({self.backend.runner.job.summary()}). Wait for it to finish, "
                       "or press Cancel.")
        req = self.build_request(*inputs)
        job = self.backend.runner.start("unlearn", req.label, self.backend.run_unlearn, req.cfg)
        job.request = req
        return job

    def cancel(self) -> str:
        if self.backend.runner.cancel():
            return "Cancelling: the job stops at its next step; no adapter will be written."
        return "No job is running."

    def contact_sheet(self, job):
        req = getattr(job, "request", None)
        sheets = [Path(pl.pairs.out) / "contact_sheet.png" for pl in req.plans] if req else []
        sheets = [s for s in sheets if s.exists()]
        return max(sheets, key=lambda s: s.stat().st_mtime) if sheets else None

    def status_text(self, job) -> str:
        if job.state == "running":
            cancel = " (cancelling…)" if job.cancel_requested else ""
            return f"**Running**{cancel}: {_esc(job.summary())}"
        took = format_seconds((job.finished or time.time()) - job.started)
        if job.state == "done":
            lines = [f"**Done** in {took}."]
            for r in job.result or []:
                used = r.pairs.made + r.pairs.kept_existing
                lines.append(f"- `{r.adapter.name}` ({r.concept}, {used} pairs) saved in `{r.adapter.parent}`")
            names = " ".join(f"<lora:{r.adapter.stem}:1>" for r in job.result or [])
            lines.append(f"\nIn A1111/Forge add `{names}` to a prompt; or pick it under *Compare adapters*.")
            return "\n".join(lines)
        if job.state == "cancelled":
            req = getattr(job, "request", None)
            saved = [p for p in (req.outputs if req else []) if p.exists() and p.stat().st_mtime >= job.started]
            if saved:  # the cancel came after an adapter was complete (e.g. during its preview)
                return (f"**Cancelled** after {took}, once {', '.join(f'`{p.name}`' for p in saved)} had been "
                        "saved complete; the rest (previews, further concepts) was skipped.")
            return f"**Cancelled** after {took}: no adapter was written."
        return f"**Failed** after {took}: {_esc(job.error or 'unknown error')}"

    def watch(self, job, poll: float = POLL_SECONDS):
        """Yield (status, bar, contact sheet path|None, preview image|None, finished) while the job runs."""
        last, sheet_seen, tick = None, None, 0.0
        while True:
            finished = not job.running
            sheet = self.contact_sheet(job)
            status = self.status_text(job)
            new_sheet = sheet if sheet is not None and (sheet, sheet.stat().st_mtime) != sheet_seen else None
            if new_sheet is not None:
                sheet_seen = (sheet, sheet.stat().st_mtime)
            if finished or status != last or new_sheet is not None or time.time() - tick > 2:
                preview = None
                if finished and job.state == "done":
                    previews = [_open_image(r.preview) for r in job.result or [] if r.preview]
                    preview = _stack_vertically(previews) if previews else None
                yield status, progress_bar(job.fraction(), job.state), new_sheet, preview, finished
                last, tick = status, time.time()
            if finished:
                return
            job.wait(poll)

    def model_line(self, model) -> str:
        """The model and its family (read from the file's keys or the folder's model_index.json: no weights are
        loaded), shown next to the Model box, e.g. "testbed — SD 1.x"."""
        spec = (model or "").strip() or self.backend.default_model()
        try:
            family = self.backend.model_family(self.backend.model_for_training(spec))
        except Exception as e:  # noqa: a model still being typed, a missing file, a host with no checkpoint
            return f"Family: unknown ({_esc(str(e).splitlines()[0] if str(e) else type(e).__name__)})"
        name = self.backend.current_model_name(spec) or spec
        return f"**{_esc(str(name))}** — {family_label(family)}" if family else f"**{_esc(str(name))}**"

    # -- Compare adapters --
    def adapter_table(self) -> str:
        try:
            adapters = self.backend.list_adapters()
        except UserError as e:  # an unreadable LoRA folder: said, not shown as an empty one
            return f"⚠️ {_esc(str(e))}"
        note = self._unreadable_note()
        if not adapters:
            if note:  # "none yet" would be wrong: some files could not be looked at
                return f"No readable DUO adapter in `{self.backend.lora_dir}`.\n\n{note}"
            return f"No DUO adapter in `{self.backend.lora_dir}` yet: make one with *Unlearn concept*."
        head = "| adapter | concept | β | steps | pairs | base model | rank |\n|---|---|---|---|---|---|---|\n"
        rows = "".join("| " + " | ".join(_esc(str(v)) for v in a.row().values()) + " |\n" for a in adapters)
        return f"DUO adapters in `{self.backend.lora_dir}`:\n\n" + head + rows + (f"\n{note}" if note else "")

    def _unreadable_note(self, most: int = 3) -> str:
        """One line naming what the last listing could not read (permission denied …), or ""."""
        unreadable = getattr(self.backend, "unreadable", None) or []
        if not unreadable:
            return ""
        shown = ", ".join(f"`{u.path}`{'/' if u.folder else ''} ({_esc(u.reason)})" for u in unreadable[:most])
        more = f" and {len(unreadable) - most} more" if len(unreadable) > most else ""
        return f"⚠️ Not listed, cannot be read: {shown}{more}"

    def adapter_names(self) -> list[str]:
        try:
            return [NONE] + [a.name for a in self.backend.list_adapters()]
        except UserError:  # the table says why
            return [NONE]

    def compare(self, model, prompt, negative, seed, steps, guidance, *slots):
        """slots: name1, weight1, name2, weight2, … → (base, adapted, note)."""
        if self.backend.runner.busy():
            raise Busy(f"A job is running ({self.backend.runner.job.summary()}); compare when it has finished.")
        prompt = (prompt or "").strip()
        if not prompt:
            raise UserError("The prompt is empty: write what to generate, e.g. a red circle on a white background")
        chosen = []
        for name, weight in zip(slots[0::2], slots[1::2]):
            if name and name != NONE:
                w = _float(weight, f"Weight of {name}", positive=False)
                if abs(w) > 10:  # the sliders stop at ±2; far past that an adapter only draws noise
                    raise UserError(f"Weight of {name} must be from -10 to 10, got {weight!r}")
                chosen.append((self.backend.find_adapter(name), w))
        if not chosen:
            raise UserError("Pick at least one adapter to compare with the base model")
        names = [a.name for a, _ in chosen]
        if len(set(names)) != len(names):
            raise UserError("The same adapter is picked twice; pick each once and set its weight")
        seed, steps = _int(seed, "Seed", 0, SEED_MAX), _int(steps, "Steps", 1, MOST_STEPS)
        guidance = _float(guidance, "Guidance", False)
        if guidance < 0:
            raise UserError(f"Guidance must be 0 or more, got {guidance!r}")
        model = (model or "").strip() or self.backend.default_model()
        try:
            # in a host the model box holds the checkpoint's title; the family is the selected checkpoint's
            family = self.backend.model_family(self.backend.model_for_training(model))
        except Exception:  # noqa - an unreadable model is the comparison's own to report
            family = None
        _refuse_other_family(chosen, family)
        job = self.backend.runner.run_here("compare", "comparing", self.backend.compare, model, chosen, prompt,
                                           negative, seed, steps, guidance)
        if job.state != "done":
            raise UserError(job.error or "the comparison stopped")
        base, adapted, note = job.result
        trained_on = {str(a.duo.get("base_model")) for a, _ in chosen if a.duo.get("base_model")}
        current = self.backend.current_model_name(model)
        if current and trained_on and trained_on != {current}:
            note += f" · note: trained on {', '.join(sorted(trained_on))}, compared on {current}"
        return base, adapted, note


# ---------------------------------------------------------------------------------------------------------------
# gradio layout


def _gradio_major() -> int:
    import gradio as gr

    return int(gr.__version__.split(".")[0])


def _update(**kwargs):
    import gradio as gr

    return gr.update(**kwargs)


def _listen(event, fn, inputs, outputs, api_name: str, concurrent: bool = False, quiet: bool = False):
    """event(fn, …) with the keyword arguments this gradio knows: gradio 4+ queues a second click behind the
    first by default (concurrency_limit=1, trigger_mode="once"); the job runner already allows one job, so the
    click handlers run concurrently and a second click gets its message at once."""
    kwargs = {"inputs": inputs, "outputs": outputs, "api_name": api_name}
    if concurrent and _gradio_major() >= 4:
        kwargs.update(concurrency_limit=None, trigger_mode="multiple")
    if quiet:  # the tab draws its own progress bar: no spinner overlay on the outputs
        kwargs["show_progress"] = "hidden"
    return event(fn, **kwargs)


def build_tab(backend) -> dict:
    """Create the tab's components inside the current gr.Blocks; returns them by name (tests use it)."""
    import gradio as gr

    ctl = TabController(backend)
    c: dict = {"controller": ctl}
    preset0 = ctl.default_preset()
    choices0, concept0, unsafe0, safe0, pairs0, beta0, desc0 = ctl.preset_fields(preset0)
    steps0, rank0 = ctl.training_defaults(preset0)
    model_info = ("a diffusers folder, a .safetensors/.ckpt checkpoint, or a bundled test bed by name: "
                  + testbeds_label() if backend.model_editable else "the checkpoint selected at the top of the web UI")

    gr.Markdown("## DUO concept unlearning\nTrain a LoRA that removes a concept from the model (Direct Unlearning "
                "Optimization), then compare it with the base model.")
    c["model"] = gr.Textbox(label="Model", value=backend.default_model(), info=model_info,
                            interactive=backend.model_editable, elem_id="duo_model")
    c["model_family"] = gr.Markdown(ctl.model_line(backend.default_model()), elem_id="duo_model_family")
    with gr.Tab("Unlearn concept", elem_id="duo_tab_unlearn"):
        with gr.Row():
            c["preset"] = gr.Dropdown(label="Preset", choices=ctl.preset_names(), value=preset0,
                                      elem_id="duo_preset")
            c["concept"] = gr.Dropdown(label="Concept", choices=choices0, value=concept0, elem_id="duo_concept")
        c["preset_info"] = gr.Markdown(desc0, elem_id="duo_preset_info")
        with gr.Row():
            c["unsafe"] = gr.Textbox(label="Unsafe prompts (show the concept), one per line", value=unsafe0, lines=4,
                                     elem_id="duo_unsafe")
            c["safe"] = gr.Textbox(label="Safe prompts (the same without it), one per line", value=safe0, lines=4,
                                   elem_id="duo_safe")
        with gr.Row():
            c["num_pairs"] = gr.Number(label="Pairs", value=pairs0, precision=0, elem_id="duo_pairs")
            c["beta"] = gr.Number(label="β (higher: stays closer to the base model)", value=beta0,
                                  elem_id="duo_beta")
            c["steps"] = gr.Number(label="Steps", value=steps0, precision=0, elem_id="duo_steps")
            c["rank"] = gr.Number(label="Rank", value=rank0, precision=0, elem_id="duo_rank")
        c["out_name"] = gr.Textbox(label="Output name (saved as <name>.safetensors in the LoRA folder)",
                                   value=f"duo_{concept0}", elem_id="duo_out_name")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                # gradio sends an emptied Number as 0: 0 means "the preset's / the default"
                c["strength"] = gr.Number(label="SDEdit strength (0: the preset's)", value=0, elem_id="duo_strength")
                c["lr"] = gr.Number(label="Learning rate (0: the default)", value=0, elem_id="duo_lr")
                c["lr_scheduler"] = gr.Dropdown(label="Learning-rate schedule", choices=list(SCHEDULES),
                                                value="constant", elem_id="duo_lr_scheduler")
                c["lr_warmup_steps"] = gr.Number(label="Warm-up steps", value=0, precision=0,
                                                 elem_id="duo_lr_warmup")
                c["seed"] = gr.Number(label="Seed", value=0, precision=0, elem_id="duo_seed")
                c["batch_pairs"] = gr.Number(label="Pairs per step", value=4, precision=0, elem_id="duo_batch")
            with gr.Row():
                c["detector"] = gr.Textbox(label="Detector (blank: preset; none, nudenet, colour:red …)", value="",
                                           elem_id="duo_detector")
                c["config_dir"] = gr.Textbox(label="Diffusers config folder for single-file checkpoints (offline)",
                                             value="", elem_id="duo_config_dir")
                c["twin_negative"] = gr.Textbox(label="Safe twins' negative prompt ({unsafe}: the pair's unsafe "
                                                      "prompt; blank: the preset's)", value="",
                                                elem_id="duo_twin_negative")
            with gr.Row():
                c["preview"] = gr.Checkbox(label="Render a base vs unlearned preview", value=True,
                                           elem_id="duo_preview")
                c["overwrite"] = gr.Checkbox(label="Overwrite an adapter of the same name", value=False,
                                             elem_id="duo_overwrite")
            with gr.Row():
                c["device"] = gr.Textbox(label="Device (auto, cpu, cuda, cuda:1, mps)", value="auto",
                                         elem_id="duo_device")
                c["mixed_precision"] = gr.Dropdown(label="Mixed precision (auto: bf16/fp16 on a GPU, fp32 on CPU)",
                                                   choices=PRECISIONS, value="auto", elem_id="duo_mixed_precision")
                c["gradient_checkpointing"] = gr.Dropdown(
                    label="Gradient checkpointing (auto: on when memory is short)", choices=CHECKPOINTING,
                    value="auto", elem_id="duo_gradient_checkpointing")
                c["resolution"] = gr.Number(label="Resolution (0: the model's native size)", value=0, precision=0,
                                            elem_id="duo_resolution")
                c["micro_batch_pairs"] = gr.Number(label="Micro-batch pairs (0: all pairs of a step at once)",
                                                   value=0, precision=0, elem_id="duo_micro_batch")
            with gr.Row():  # text boxes: blank is "the preset's", which a Number cannot say
                c["retain_prompts"] = gr.Textbox(label="Retain prompts: what must stay as it is, one per line "
                                                       "(blank: the preset's)", value="", lines=2,
                                                 elem_id="duo_retain_prompts")
                c["num_retain"] = gr.Textbox(label="Retain images (blank: the preset's; 0: none)", value="",
                                             elem_id="duo_num_retain")
                c["lam_retain"] = gr.Textbox(label="Retain weight λ_retain (blank: the preset's; 0: off)", value="",
                                             elem_id="duo_lam_retain")
            with gr.Row():
                c["concept_directions"] = gr.Textbox(
                    label="Concept directions per layer: a number, a share (0.5) or auto "
                          "(blank: the preset's; 0: off)", value="",
                    elem_id="duo_concept_directions")
                c["close_concepts"] = gr.Textbox(label="Close concepts: retain-prompt words, comma-separated "
                                                       "(blank: the preset's)", value="",
                                                 elem_id="duo_close_concepts")
                c["close_weight"] = gr.Textbox(label="Close weight (blank: the preset's)", value="",
                                               elem_id="duo_close_weight")
        with gr.Row():
            c["run"] = gr.Button("Unlearn concept", variant="primary", elem_id="duo_run")
            c["cancel"] = gr.Button("Cancel", elem_id="duo_cancel")
        c["notice"] = gr.Markdown("", elem_id="duo_notice")
        c["bar"] = gr.HTML(progress_bar(0.0, "idle"), elem_id="duo_bar")
        c["status"] = gr.Markdown("Idle.", elem_id="duo_status")
        with gr.Row():
            c["sheet"] = gr.Image(label="Pairs (unsafe | safe)", type="pil", interactive=False, elem_id="duo_sheet")
            c["preview_img"] = gr.Image(label="Preview (base | unlearned)", type="pil", interactive=False,
                                        elem_id="duo_preview_img")
    with gr.Tab("Compare adapters", elem_id="duo_tab_compare"):
        c["table"] = gr.Markdown(ctl.adapter_table(), elem_id="duo_adapters")
        names0 = ctl.adapter_names()
        c["slots"] = []
        for k in range(MAX_STACK):
            with gr.Row():
                dd = gr.Dropdown(label=f"Adapter {k + 1}", choices=names0, value=NONE, elem_id=f"duo_adapter_{k}")
                w = gr.Slider(label="Weight", minimum=-2, maximum=2, step=0.05, value=1.0, elem_id=f"duo_weight_{k}")
            c["slots"] += [dd, w]
        c["refresh"] = gr.Button("Refresh list", elem_id="duo_refresh")
        c["prompt"] = gr.Textbox(label="Prompt", value=unsafe0.splitlines()[0] if unsafe0 else "",
                                 elem_id="duo_cmp_prompt")
        c["negative"] = gr.Textbox(label="Negative prompt", value="", elem_id="duo_cmp_negative")
        with gr.Row():
            c["cmp_seed"] = gr.Number(label="Seed", value=0, precision=0, elem_id="duo_cmp_seed")
            c["cmp_steps"] = gr.Number(label="Steps", value=25, precision=0, elem_id="duo_cmp_steps")
            c["cmp_guidance"] = gr.Number(label="Guidance (CFG)", value=5.0, elem_id="duo_cmp_guidance")
        c["compare"] = gr.Button("Compare", variant="primary", elem_id="duo_compare")
        c["cmp_note"] = gr.Markdown("", elem_id="duo_cmp_note")
        with gr.Row():
            c["base_img"] = gr.Image(label="Base model", type="pil", interactive=False, height=320,
                                     elem_id="duo_base_img")
            c["adapted_img"] = gr.Image(label="With the adapters", type="pil", interactive=False, height=320,
                                        elem_id="duo_adapted_img")

    dropdowns = c["slots"][0::2]
    unlearn_inputs = [c[k] for k in ("model", "preset", "concept", "unsafe", "safe", "num_pairs", "beta", "steps",
                                     "rank", "out_name", "strength", "lr", "seed", "batch_pairs", "detector",
                                     "preview", "overwrite", "config_dir", "device", "mixed_precision",
                                     "gradient_checkpointing", "resolution", "micro_batch_pairs", "retain_prompts",
                                     "num_retain", "lam_retain", "lr_scheduler", "lr_warmup_steps",
                                     "concept_directions", "close_concepts", "close_weight", "twin_negative")]

    def on_preset(preset):
        try:
            choices, concept, unsafe, safe, pairs, beta, desc = ctl.preset_fields(preset)
        except UserError as e:
            return [_update()] * 8 + [f"**{_esc(str(e))}**"]
        steps, rank = ctl.training_defaults(preset)
        return (_update(choices=choices, value=concept), unsafe, safe, pairs, beta, steps, rank,
                _update(value=f"duo_{concept}"), desc)

    def on_concept(preset, concept):
        try:
            _, concept, unsafe, safe, *_ = ctl.preset_fields(preset, concept)
        except UserError:
            return _update(), _update()
        return unsafe, safe

    def on_start(*inputs):
        """Start the job and return at once, so the button is free again: a second click gets its message on
        every gradio (gradio 3 ignores clicks on a button whose event is still running)."""
        keep = _update()
        try:
            ctl.start(*inputs)
        except Busy as e:  # the running job's widgets stay as they are; this page starts following it
            return (f"⚠️ {_esc(str(e))}", keep, keep, keep, keep, True)
        except UserError as e:
            return (f"⚠️ {_esc(str(e))}", keep, keep, keep, keep, False)
        return ("", progress_bar(0.0), "**Running**: starting…", None, None, True)

    def on_watch(follow):
        """Stream the running job's progress into this page (chained after on_start)."""
        keep = _update()
        job = ctl.backend.runner.job
        if not follow or job is None or job.kind != "unlearn":
            yield (keep, keep, keep, keep, keep, *[keep] * MAX_STACK)
            return
        for status, bar, sheet, preview, finished in ctl.watch(job):
            sheet_img = _open_image(sheet) if sheet is not None else keep
            if not finished:
                yield (keep, bar, status, sheet_img, keep, *[keep] * MAX_STACK)
                continue
            names = ctl.adapter_names()
            new = [r.adapter.stem for r in job.result or []] if job.state == "done" else []
            slots = [_update(choices=names, value=new[k]) if k < len(new) and new[k] in names
                     else _update(choices=names) for k in range(MAX_STACK)]
            yield ("", bar, status, sheet_img, preview if preview is not None else keep, *slots)  # notice done

    def on_cancel():
        return ctl.cancel()

    def on_refresh(model):
        names = ctl.adapter_names()
        return (ctl.adapter_table(), ctl.model_line(model), *[_update(choices=names) for _ in range(MAX_STACK)])

    def on_compare(*inputs):
        try:
            base, adapted, note = ctl.compare(*inputs)
        except UserError as e:
            return None, None, f"⚠️ {_esc(str(e))}"
        return for_display(base), for_display(adapted), _esc(note)

    c["preset"].change(on_preset, inputs=[c["preset"]],
                       outputs=[c["concept"], c["unsafe"], c["safe"], c["num_pairs"], c["beta"], c["steps"], c["rank"],
                                c["out_name"], c["preset_info"]])
    c["concept"].change(on_concept, inputs=[c["preset"], c["concept"]], outputs=[c["unsafe"], c["safe"]])
    follow = gr.State(False)
    started = _listen(c["run"].click, on_start, unlearn_inputs,
                      [c["notice"], c["bar"], c["status"], c["sheet"], c["preview_img"], follow], "duo_unlearn",
                      concurrent=True, quiet=True)
    _listen(started.then, on_watch, [follow],
            [c["notice"], c["bar"], c["status"], c["sheet"], c["preview_img"], *dropdowns], "duo_watch",
            concurrent=True, quiet=True)
    _listen(c["cancel"].click, on_cancel, [], [c["notice"]], "duo_cancel", concurrent=True, quiet=True)
    _listen(c["refresh"].click, on_refresh, [c["model"]], [c["table"], c["model_family"], *dropdowns], "duo_refresh")
    if backend.model_editable:
        c["model"].change(ctl.model_line, inputs=[c["model"]], outputs=[c["model_family"]])
    _listen(c["compare"].click, on_compare,
            [c["model"], c["prompt"], c["negative"], c["cmp_seed"], c["cmp_steps"], c["cmp_guidance"], *c["slots"]],
            [c["base_img"], c["adapted_img"], c["cmp_note"]], "duo_compare", concurrent=True)
    # The table follows the list: after a run, the dropdown update refreshes it too.
    dropdowns[0].change(lambda *_: ctl.adapter_table(), inputs=[], outputs=[c["table"]])
    return c


def create_blocks(backend, title: str = "DUO unlearning"):
    """A gr.Blocks holding the tab: the standalone app and the A1111 on_ui_tabs callback both use it."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False, title=title) as blocks:
        components = build_tab(backend)
    blocks.duo_components = components
    return blocks
