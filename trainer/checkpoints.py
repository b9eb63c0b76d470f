"""Resumable training state: a folder per step, written whole or not at all, removed only by the run that owns it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_dir, disk_error
from .errors import UserError, refuse_unreadable
from .lora import lora_state, set_lora_state

MARKER = ".duo-checkpoints"  # written into a checkpoint folder that duo-unlearn created, so it may remove it


@dataclass
class CheckpointFolder:
    root: Path
    created: list[Path] = field(default_factory=list)  # step folders this run wrote or resumed from

    def existing(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() and (p / "state.pt").exists():
                found.append((int(p.name[5:]), p))
        return sorted(found)

    def save(self, step: int, denoiser, optimizer, gen, history, fingerprint: dict, scaler=None,
             schedule=None, grown: list | None = None) -> Path:
        """grown: the on-policy pairs added so far (LatentCache.grown), which a resumed run must draw from too."""
        import torch
        from safetensors.torch import save_file

        if not self.root.exists():
            try:
                self.root.mkdir(parents=True)
            except OSError as e:
                raise UserError(f"cannot create the checkpoint folder {self.root}: {e.strerror or e}") from None
            try:
                (self.root / MARKER).write_text("checkpoints of a duo-unlearn training run\n")
            except OSError as e:
                (self.root / MARKER).unlink(missing_ok=True)
                self.root.rmdir()
                raise disk_error(self.root / MARKER, e) from None
        final = self.root / f"step-{step:06d}"
        try:
            with atomic_dir(final) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in lora_state(denoiser).items()},
                          str(tmp / "lora.safetensors"))
                torch.save({"optimizer": optimizer.state_dict(), "rng": gen.get_state(), "step": step,
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "lr_schedule": schedule.state_dict() if schedule is not None else None,
                            "fingerprint": fingerprint, "grown_pairs": grown or []}, tmp / "state.pt")
                (tmp / "history.json").write_text(json.dumps(history))
        except BaseException:
            self._remove_if_empty()  # a first checkpoint that failed (disk full) leaves no empty folder behind
            raise
        self.created.append(final)
        return final

    def _remove_if_empty(self) -> None:
        """The folder goes if it holds nothing but the marker of duo-unlearn having made it (a user's own folder,
        even an empty one, has no marker and stays)."""
        try:
            if self.root.is_dir() and {p.name for p in self.root.iterdir()} == {MARKER}:
                (self.root / MARKER).unlink()
                self.root.rmdir()
        except OSError:
            pass

    def load_newest(self, denoiser, optimizer, gen, fingerprint: dict, steps: int, scaler=None, schedule=None,
                    cache=None):
        """(step, history) of the newest checkpoint, or (0, []) when there is none; its on-policy pairs go into
        `cache`."""
        import pickle

        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        found = self.existing()
        if not found:
            return 0, []
        step, path = found[-1]
        # a file this user may not read is not damage: deleting the newest good checkpoint would lose its steps
        for name in ("state.pt", "lora.safetensors", "history.json"):
            refuse_unreadable(path / name)
        try:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError("state.pt holds no table of the run's state")
            theirs = state.get("fingerprint")
            if theirs is not None and theirs != fingerprint:
                diff = ", ".join(f"{k} {theirs.get(k)} -> {v}" for k, v in fingerprint.items() if theirs.get(k) != v)
                raise UserError(f"cannot resume from {path}: it was trained with other settings ({diff}); "
                                "use the same settings or another --checkpoint-dir")
            if int(state["step"]) > steps:
                raise UserError(f"cannot resume from {path}: it is at step {state['step']}, beyond --steps {steps}")
            set_lora_state(denoiser, load_file(str(path / "lora.safetensors")))
            optimizer.load_state_dict(state["optimizer"])
            gen.set_state(state["rng"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            if schedule is not None:
                _resume_schedule(schedule, state.get("lr_schedule"), int(state["step"]))
            history = json.loads((path / "history.json").read_text())
            if not isinstance(history, list):
                raise ValueError("history.json holds no list of steps")
            for grown in state.get("grown_pairs") or []:
                cache.add_pairs(grown)
        except UserError:
            raise
        except (OSError, EOFError, KeyError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError,
                json.JSONDecodeError) as e:
            refuse_unreadable(path, e)
            raise UserError(f"cannot resume from {path}: the checkpoint is damaged or from another model "
                            f"({type(e).__name__}); delete it to resume from an earlier one") from None
        self.created.append(path)
        return int(state["step"]), history

    def remove_spent(self) -> None:
        """Once the adapter exists, this run's states are spent. Nothing else in the folder is touched."""
        import shutil

        for path in self.created:
            shutil.rmtree(path, ignore_errors=True)
        self.created.clear()
        self._remove_if_empty()


def _resume_schedule(schedule, saved: dict | None, step: int) -> None:
    """The learning-rate schedule goes on from the checkpoint's step. Checkpoints from before schedules existed
    hold none (their runs were constant): the new run's schedule is placed at that step."""
    if saved is not None:
        schedule.load_state_dict(saved)
        return
    schedule.load_state_dict({**schedule.state_dict(), "last_epoch": step - 1, "_step_count": step})
    schedule.step()  # sets the optimiser's rate for the step the run goes on with
