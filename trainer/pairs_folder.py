"""Where a GUI keeps an adapter's pair dataset: one folder per model and pair settings, so a cancelled run resumes
and a changed one starts fresh, instead of failing on a folder made with other settings the user cannot name."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def pairs_folder(work_dir: Path, name: str, model_spec: str, plans) -> Path:
    """`<work_dir>/<name>-<key>`: the key changes with the model and with every setting that shapes the pairs."""
    settings = [pl.pairs.settings() for pl in plans]
    key = hashlib.sha256(json.dumps([model_spec, settings], sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(work_dir) / f"{name}-{key}"
