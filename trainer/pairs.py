"""Pair generation: unsafe images from the base model, safe twins by SDEdit, both gated by a detector.

The dataset folder is resumable. Pairs are made in fixed blocks of `batch_size` indices and a block's lines are
appended to pairs.jsonl only once all its images are on disk, so a rerun redoes at most the interrupted block,
with the same seeds and the same batch, and ends byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import disk_error, remove_tree, write_text_atomic
from .detectors import check_detector, make_detector, no_detector
from .errors import UserError
from .config import MAX_RESOLUTION, check_batch, check_sample_steps, check_seed
from .models import refuse_inside_model, resolve_model_path
from .pair_dataset import INDEX, PairRecord
from .previews import save_png
from .presets import UNSAFE_PROMPT
from .progress import ProgressCallback, ProgressEvent, report
from .twin_region import keep_outside_concept
from .retain_set import RETAIN_INDEX, RetainRecord, retain_prompt, retain_seed
from .runtime import RuntimeConfig, quiet_diffusers

SKIPPED = "skipped.jsonl"
SETTINGS = "dataset.json"
CONTACT_SHEET = "contact_sheet.png"


@dataclass
class PairConfig:
    out: str = ""
    model: str = "testbed"
    config_dir: str | None = None
    drop_t5: bool = False  # SD3: load without T5 (diffusers' text_encoder_3=None), for small cards
    unsafe_prompts: tuple[str, ...] = ()
    safe_prompts: tuple[str, ...] = ()
    num_pairs: int = 32
    strength: float = 0.75
    guidance: float = 7.5
    sample_steps: int = 50  # the official pipeline's default
    detector: str = "none"
    max_retries: int = -1  # -1: retry until the detector agrees, as the official script does
    seed: int = 0
    batch_size: int = 8
    resolution: int | None = None  # None: the model's native size
    device: str = "auto"
    mixed_precision: str = "auto"  # pair images are sampled on the device, frozen weights in half precision there
    edit_region: str = "image"  # "concept": twins keep the unsafe image outside the detector's region (twin_region)
    twin_negative: str = UNSAFE_PROMPT  # the twins' negative prompt; in it UNSAFE_PROMPT is the pair's unsafe prompt
    retain_prompts: tuple[str, ...] = ()  # the retain set: base-model images of what must stay (retain_set.py)
    num_retain: int = 0  # retain images, laid over retain_prompts in blocks; 0: no retain set

    def validate(self) -> None:
        from .runtime import RuntimeConfig

        RuntimeConfig(self.device, self.mixed_precision).validate()
        if self.resolution is not None and not (isinstance(self.resolution, int) and self.resolution > 0
                                                and self.resolution % 8 == 0):
            raise UserError(f"resolution must be a positive multiple of 8, got {self.resolution!r}")
        if self.resolution is not None and self.resolution > MAX_RESOLUTION:
            raise UserError(f"resolution {self.resolution} is over {MAX_RESOLUTION}: no supported model draws that "
                            "large, and the images alone would not fit in memory")
        if not self.out:
            raise UserError("no output folder for the pairs (--out DIR)")
        if not [p for p in self.unsafe_prompts if p.strip()]:
            raise UserError("no unsafe prompts: give at least one (--unsafe-prompt) or a preset")
        if not [p for p in self.safe_prompts if p.strip()]:
            raise UserError("no safe prompts: give at least one (--safe-prompt) or a preset")
        if len(self.safe_prompts) not in (1, len(self.unsafe_prompts)):
            raise UserError(f"give one safe prompt, or one per unsafe prompt ({len(self.unsafe_prompts)}); "
                            f"got {len(self.safe_prompts)}")
        if not (isinstance(self.num_pairs, int) and self.num_pairs > 0):
            raise UserError(f"number of pairs must be a positive integer, got {self.num_pairs!r}")
        if self.num_pairs > MAX_PAIRS or (isinstance(self.num_retain, int) and self.num_retain > MAX_PAIRS):
            raise UserError(f"at most {MAX_PAIRS} pairs and {MAX_PAIRS} retain images, got {self.num_pairs} and "
                            f"{self.num_retain}")
        if not (isinstance(self.strength, (int, float)) and 0 < self.strength <= 1):
            raise UserError(f"SDEdit strength must be in (0, 1], got {self.strength!r}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise UserError(f"guidance must be zero or positive, got {self.guidance!r}")
        if self.sample_steps <= 0 or self.batch_size <= 0:
            raise UserError("sample_steps and batch_size must be positive")
        if int(self.strength * self.sample_steps) < 1:  # img2img denoises strength × steps steps: none is no twin
            raise UserError(f"SDEdit strength {self.strength:g} × {self.sample_steps} sampling steps leaves no step to "
                            f"denoise: raise the strength to at least {1 / self.sample_steps:g} or the steps")
        check_sample_steps("sample_steps", self.sample_steps)
        check_batch("batch_size", self.batch_size)
        if not isinstance(self.twin_negative, str):
            raise UserError(f"twin_negative must be text ({UNSAFE_PROMPT} for the pair's unsafe prompt), "
                            f"got {self.twin_negative!r}")
        if self.edit_region not in ("image", "concept"):
            raise UserError(f"edit_region must be 'image' (SDEdit repaints all, the paper's twins) or 'concept', "
                            f"got {self.edit_region!r}")
        if self.edit_region == "concept" and no_detector(self.detector):
            raise UserError("edit_region 'concept' needs a detector that finds the concept (nudenet, colour:<name>)")
        if not (isinstance(self.num_retain, int) and self.num_retain >= 0):
            raise UserError(f"num_retain must be 0 or a positive integer, got {self.num_retain!r}")
        if self.num_retain and not [p for p in self.retain_prompts if p.strip()]:
            raise UserError("a retain set needs prompts: give --retain-prompt (one or more) or set --num-retain 0")
        check_detector(self.detector)  # a typo is said now, not once the model has loaded
        check_seed("seed", self.seed, MAX_PAIR_SEED)
        if not (isinstance(self.max_retries, int) and self.max_retries >= -1):
            raise UserError(f"max_retries must be -1 (until success) or a count >= 0, got {self.max_retries!r}")

    def prompts_for(self, i: int) -> tuple[str, str]:
        """Pair i's prompts: the prompt list is laid over the pairs in contiguous blocks (as the paper's sets)."""
        k = i * len(self.unsafe_prompts) // self.num_pairs
        return self.unsafe_prompts[k], self.safe_prompts[k if len(self.safe_prompts) > 1 else 0]

    def twin_negative_for(self, i: int) -> str:
        """Pair i's twin's negative prompt. The whole unsafe prompt (the paper's) also pushes the twin away from
        everything else it names: on the test bed 14 of 32 twins took another shape, against 9 with "red" alone."""
        return self.twin_negative.replace(UNSAFE_PROMPT, self.prompts_for(i)[0])

    def settings(self) -> dict:
        """What decides the images: a folder made with other settings is not resumed into."""
        keys = ("unsafe_prompts", "safe_prompts", "num_pairs", "strength", "guidance", "sample_steps", "detector",
                "max_retries", "seed", "batch_size", "resolution")
        # resolution and the retain set only when set: folders made before they existed still resume
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
               if k in keys and not (k == "resolution" and v is None)}
        if self.edit_region != "image":
            out["edit_region"] = self.edit_region
        if self.twin_negative != UNSAFE_PROMPT:
            out["twin_negative"] = self.twin_negative
        if self.num_retain:
            out |= {"retain_prompts": list(self.retain_prompts), "num_retain": self.num_retain}
        return out


@dataclass
class PairStats:
    folder: Path
    made: int = 0
    kept_existing: int = 0
    skipped: int = 0
    unsafe_rejected: int = 0
    safe_rejected: int = 0
    seconds: float = 0.0
    contact_sheet: Path | None = None
    skipped_reasons: dict = field(default_factory=dict)


MAX_PAIRS = 100_000  # the paper uses 64–256; each pair is two images on disk, and the plan is laid out up front
MAX_PAIR_SEED = 2**32 - 1  # image_seed multiplies the run seed by 64 million: torch's 64-bit seeds hold that


def image_seed(base: int, i: int, attempt: int, safe: bool) -> int:
    """A distinct seed per (run seed, pair, attempt, side). The first 32 attempts keep the layout of earlier
    versions (so their datasets resume unchanged); later attempts of a retry-until-success run are hashed."""
    if attempt < 32:
        return ((base * 1_000_000 + i) * 32 + attempt) * 2 + int(safe)
    import hashlib

    digest = hashlib.sha256(f"{base}/{i}/{attempt}/{int(safe)}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _generators(seeds):
    import torch

    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _append_lines(path: Path, lines: list[str]) -> None:
    """All the lines or none: a write that fails part way (a full disk) is cut back off, so the index never holds
    half a block that a resumed run would then make and append again."""
    if not lines:
        return
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    try:
        # unbuffered: a buffered file would try to flush again on the way out and leave the partial block in place
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
    except OSError as e:
        raise disk_error(path, e) from None


def _read_ids(path: Path) -> list[dict]:
    """Complete lines of a jsonl file; a torn last line (a crash mid-write) is cut off the file."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            write_text_atomic(path, text)
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}); use a new folder") from None
    if not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in rows):
        raise UserError(f"{path} holds lines that are not pair records; use a new folder")
    return rows


@contextmanager
def _locked(folder: Path):
    """One pairs run per folder: a second one would append every record again. The folder itself is locked, so
    a refused run leaves no lock file behind."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another run is making pairs in {folder}; wait for it or use another folder") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def check_pair_folder(out: str | Path) -> None:
    """Pairs go into fixed names (unsafe/00000.png, contact_sheet.png, ...) and a folder is resumed, not emptied:
    only a pair dataset (it has dataset.json), an empty folder or a new one is written into, so a folder of the
    user's own files is refused before anything in it is replaced. An atomic write's leftover temp file (a kill
    before dataset.json was in place) does not count."""
    folder = Path(out)
    if not folder.is_dir() or (folder / SETTINGS).exists():
        return
    if any(not (f.name.startswith(".") and f.name.endswith(".tmp")) for f in folder.iterdir()):
        raise UserError(f"{folder} holds files but no pair dataset ({SETTINGS}); give a new or empty folder "
                        "for the pairs")


def made_with(folder: str | Path) -> dict:
    """The settings a pair folder's pairs were made with; empty for a folder of the user's own pairs (or a damaged
    record: the pairs themselves are read, and checked, by pair_dataset)."""
    try:
        recorded = json.loads((Path(folder) / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    settings = recorded.get("settings") if isinstance(recorded, dict) else None
    return settings if isinstance(settings, dict) else {}


def _make_folder(cfg: PairConfig) -> Path:
    folder = Path(cfg.out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the pair folder {folder}: {e.strerror or e}") from None
    return folder


def _make_subfolders(folder: Path) -> None:
    try:
        (folder / "unsafe").mkdir(exist_ok=True)
        (folder / "safe").mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the pair folder {folder}: {e.strerror or e}") from None


def _check_settings(cfg: PairConfig, folder: Path) -> set[str]:
    settings_file = folder / SETTINGS
    if settings_file.exists():
        try:
            old = json.loads(settings_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise UserError(f"{settings_file} is damaged ({type(e).__name__}); use a new folder") from None
        if not isinstance(old, dict) or old.get("settings") != cfg.settings():
            raise UserError(f"{folder} holds pairs made with other settings; use a new folder "
                            "(or the same settings to resume)")
        if not _same_model(old.get("model"), cfg.model):  # DUO's pairs are the base model's own images
            raise UserError(f"{folder} holds pairs made by another model ({old.get('model')}); use a new folder "
                            f"for {cfg.model}")
    else:
        write_text_atomic(settings_file, json.dumps({"settings": cfg.settings(), "model": str(cfg.model)}, indent=2))
    return {r["id"] for r in _read_ids(folder / INDEX)} | {r["id"] for r in _read_ids(folder / SKIPPED)}


def _same_model(recorded, spec) -> bool:
    """The model a folder's pairs came from is this one: the same name, or the same file or folder however it is
    spelled. A folder from before the model was recorded is taken at its word."""
    if recorded is None or str(recorded) == str(spec):
        return True
    try:
        return resolve_model_path(str(recorded)).resolve() == resolve_model_path(str(spec)).resolve()
    except (UserError, OSError):  # the recorded model is gone or moved: not provably the same
        return False


def generate_pairs(cfg: PairConfig, progress: ProgressCallback | None = None, model=None,
                   detector=None) -> PairStats:
    """Make (or complete) a pair dataset folder; returns what was made, kept and skipped."""
    cfg.validate()
    detector = detector if detector is not None else make_detector(cfg.detector)
    if model is not None:
        refuse_inside_model(cfg.out, model.source)
    made = _first_missing(Path(cfg.out))
    folder = _make_folder(cfg)
    try:
        with _locked(folder):  # a run holding the folder is said first: its own files are not the user's
            check_pair_folder(folder)
            done = _check_settings(cfg, folder)
            _make_subfolders(folder)
            return _generate(cfg, progress, model, detector, folder, done)
    except UserError:
        # refused before a pair was made (the model missing, or not the one to use): a folder this run made holds
        # only its settings, and would refuse the corrected run as "made with other settings"
        if made is not None and not _read_ids(folder / INDEX) and not _read_ids(folder / RETAIN_INDEX):
            remove_tree(made)
        raise


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of `folder`'s path that does not exist yet (what making it would create)."""
    missing = None
    while not folder.exists() and folder != folder.parent:
        missing, folder = folder, folder.parent
    return missing


def _generate(cfg: PairConfig, progress, model, detector, folder: Path, done: set[str]) -> PairStats:
    from .families import get_family
    from .models import load_model, model_options

    started = time.time()
    stats = PairStats(folder=folder)
    stats.kept_existing = len([i for i in range(cfg.num_pairs) if f"{i:05d}" in done])
    todo_blocks = [list(range(b, min(b + cfg.batch_size, cfg.num_pairs)))
                   for b in range(0, cfg.num_pairs, cfg.batch_size)]
    todo_blocks = [blk for blk in todo_blocks if any(f"{i:05d}" not in done for i in blk)]
    if not todo_blocks and len(_read_ids(folder / RETAIN_INDEX)) >= cfg.num_retain:
        return _finish(stats, folder, started)
    from .runtime import placed_for_sampling, resolve

    model = model or load_model(cfg.model, cfg.config_dir, options=model_options(cfg.drop_t5))
    refuse_inside_model(folder, model.source)
    rt = resolve(RuntimeConfig(cfg.device, cfg.mixed_precision))
    pipe = model.pipe
    family = get_family(model.family)
    with placed_for_sampling(pipe, rt, wait_after=family.text_modules(pipe)):
        report(progress, ProgressEvent("pairs", stats.kept_existing, cfg.num_pairs,
                                       f"sampling on device {rt.device}, weights {rt.frozen_dtype}"))
        edit = family.img2img(pipe)  # same modules: no second copy of the model
        _blocks(cfg, todo_blocks, pipe, edit, detector, stats, progress, folder, done)
        _retain_blocks(cfg, pipe, folder, progress)
    return _finish(stats, folder, started)


def _finish(stats: PairStats, folder: Path, started: float) -> PairStats:
    stats.contact_sheet = write_contact_sheet(folder)
    stats.seconds = time.time() - started
    return stats


def _blocks(cfg: PairConfig, todo_blocks, pipe, edit, detector, stats: PairStats, progress, folder: Path,
            done: set[str]) -> None:
    finished = stats.kept_existing
    report(progress, ProgressEvent("pairs", finished, cfg.num_pairs))  # where: unlearn says so first, `pairs` last
    for block in todo_blocks:
        records, skipped = _make_block(cfg, block, pipe, edit, detector, stats, progress, finished)
        # a block is made whole (its draws are seeded per block); pairs of it already indexed are not added again
        records = [r for r in records if r["record"].id not in done]
        skipped = [s for s in skipped if s["id"] not in done]
        for r in records:  # images first (each atomically), the index lines last
            save_png(r.pop("unsafe_image"), folder / r["record"].unsafe)
            save_png(r.pop("safe_image"), folder / r["record"].safe)
        _append_lines(folder / SKIPPED, [json.dumps(s, sort_keys=True) for s in skipped])
        _append_lines(folder / INDEX, [r["record"].to_json() for r in records])
        stats.made += len(records)
        stats.skipped += len(skipped)
        for s in skipped:
            stats.skipped_reasons[s["reason"]] = stats.skipped_reasons.get(s["reason"], 0) + 1
        finished += len(block)
        report(progress, ProgressEvent("pairs", finished, cfg.num_pairs,
                                       logs={"made": stats.made, "skipped": stats.skipped}))


def _retain_blocks(cfg: PairConfig, pipe, folder: Path, progress) -> None:
    """Base-model images of the retain prompts, in blocks like the pairs (images first, index lines last)."""
    if not cfg.num_retain:
        return
    done = {r["id"] for r in _read_ids(folder / RETAIN_INDEX)}
    todo = [i for i in range(cfg.num_retain) if f"{i:05d}" not in done]
    if not todo:
        return
    (folder / "retain").mkdir(exist_ok=True)
    size = {"height": cfg.resolution, "width": cfg.resolution} if cfg.resolution else {}
    prompts = [p for p in cfg.retain_prompts if p.strip()]
    first = f"retain set: {cfg.num_retain} images of the prompts to keep"
    first += f", {len(done)} already made" if done else ""
    for b in range(0, len(todo), cfg.batch_size):
        block = todo[b:b + cfg.batch_size]
        chunk = [retain_prompt(prompts, i, cfg.num_retain) for i in block]
        seeds = [retain_seed(cfg.seed, i) for i in block]
        images = pipe(chunk, generator=_generators(seeds), num_inference_steps=cfg.sample_steps,
                      guidance_scale=cfg.guidance, **size).images
        lines = []
        for i, prompt, seed, im in zip(block, chunk, seeds, images):
            record = RetainRecord(f"{i:05d}", f"retain/{i:05d}.png", prompt, seed)
            save_png(im, folder / record.image)
            lines.append(record.to_json())
        _append_lines(folder / RETAIN_INDEX, lines)
        # one line when the set starts, then only the count (a line per batch was 17 lines on the test bed)
        report(progress, ProgressEvent("retain", len(done) + b + len(block), cfg.num_retain, first if b == 0 else ""))


def _retrying(progress, cfg: PairConfig, finished: int, attempt: int, count: int, what: str) -> None:
    """Retries until success can take long, and never end where the detector cannot find the concept in what the
    model draws (nudenet on the shapes test bed): say so, say how to cap them, and give the host its chance to
    cancel."""
    if attempt:
        cap = "" if cfg.max_retries >= 0 else (" (no retry cap: until the detector agrees or the job is cancelled; "
                                                 "--max-retries N caps it on the command line)")
        report(progress, ProgressEvent("pairs", finished, cfg.num_pairs, f"retrying {count} {what}, "
                                                                           f"attempt {attempt + 1}{cap}"))


def _attempts(cfg: PairConfig):
    return itertools.count() if cfg.max_retries < 0 else range(cfg.max_retries + 1)


def _make_block(cfg: PairConfig, block: list[int], pipe, edit, detector, stats: PairStats, progress=None,
                finished: int = 0):
    gen_kwargs = dict(num_inference_steps=cfg.sample_steps, guidance_scale=cfg.guidance)
    size = {"height": cfg.resolution, "width": cfg.resolution} if cfg.resolution else {}
    unsafe: dict[int, tuple] = {}
    pending = list(block)
    for attempt in _attempts(cfg):
        if not pending:
            break
        _retrying(progress, cfg, finished, attempt, len(pending), "unsafe image(s) without the concept")
        images = pipe([cfg.prompts_for(i)[0] for i in pending],
                      generator=_generators([image_seed(cfg.seed, i, attempt, False) for i in pending]),
                      **gen_kwargs, **size).images
        scores = detector.scores(images) if detector else [None] * len(images)
        still = []
        for i, im, s in zip(pending, images, scores):
            if detector is None or s >= detector.threshold:
                unsafe[i] = (im, s, attempt)
            else:
                stats.unsafe_rejected += 1
                still.append(i)
        pending = still
    safe: dict[int, tuple] = {}
    pending = sorted(unsafe)
    for attempt in _attempts(cfg):
        if not pending:
            break
        _retrying(progress, cfg, finished, attempt, len(pending), "safe twin(s) still showing the concept")
        with quiet_diffusers():
            images = edit(prompt=[cfg.prompts_for(i)[1] for i in pending],
                          negative_prompt=[cfg.twin_negative_for(i) for i in pending],
                          image=[unsafe[i][0] for i in pending], strength=cfg.strength,
                          generator=_generators([image_seed(cfg.seed, i, attempt, True) for i in pending]),
                          **gen_kwargs).images
        if cfg.edit_region == "concept":
            images = keep_outside_concept(detector, [unsafe[i][0] for i in pending], images)
        scores = detector.scores(images) if detector else [None] * len(images)
        still = []
        for i, im, s in zip(pending, images, scores):
            if detector is None or s < detector.threshold:
                safe[i] = (im, s, attempt)
            else:
                stats.safe_rejected += 1
                still.append(i)
        pending = still
    records, skipped = [], []
    for i in block:
        pid = f"{i:05d}"
        unsafe_prompt, safe_prompt = cfg.prompts_for(i)
        if i not in unsafe or i not in safe:
            reason = "unsafe image never showed the concept" if i not in unsafe else "twin kept the concept"
            skipped.append({"id": pid, "reason": reason, "unsafe_prompt": unsafe_prompt})
            continue
        (u_im, u_s, u_a), (s_im, s_s, s_a) = unsafe[i], safe[i]
        record = PairRecord(
            id=pid, unsafe=f"unsafe/{pid}.png", safe=f"safe/{pid}.png", unsafe_prompt=unsafe_prompt,
            safe_prompt=safe_prompt, seed=image_seed(cfg.seed, i, u_a, False), strength=cfg.strength,
            scores={"unsafe": u_s, "safe": s_s, "detector": cfg.detector,
                    "safe_seed": image_seed(cfg.seed, i, s_a, True), "attempts": [u_a + 1, s_a + 1]})
        records.append({"record": record, "unsafe_image": u_im, "safe_image": s_im})
    return records, skipped


def write_contact_sheet(folder: Path, limit: int = 48, per_row: int = 4) -> Path | None:
    """The pairs side by side (unsafe | safe), for a person to review."""
    from PIL import Image

    from .pair_dataset import read_pairs
    from .previews import grid

    if not (folder / INDEX).exists() or not _read_ids(folder / INDEX):
        return None
    records = read_pairs(folder)[:limit]
    rows, labels = [], []
    for k in range(0, len(records), per_row):
        chunk = records[k:k + per_row]
        row = []
        for r in chunk:
            with Image.open(folder / r.unsafe) as u, Image.open(folder / r.safe) as s:
                row += [u.convert("RGB"), s.convert("RGB")]
        rows.append(row)
        labels.append(f"pairs {chunk[0].id}-{chunk[-1].id}")
    return save_png(grid(rows, labels, ["unsafe", "safe"] * per_row, cell=96), folder / CONTACT_SHEET)
