"""Are the backgrounds an adapter changes errors it makes, or the base model's errors it no longer makes?

    python benchmarks/background_truth_testbed.py ADAPTER [ADAPTER ...]
    python benchmarks/background_truth_testbed.py A.safetensors --seed 1000 --json truth.json

The efficacy table's "background kept" is agreement with the base model's image of the same prompt and seed: every
change counts against an adapter, also where the base model drew a background the prompt did not ask for. Shapes are
read against the prompt instead (accuracy ÷ base). This reads the backgrounds both ways on the table's prompts (every
other colour × shape × background, the table's seeds unless --seed) for the base model, negative prompting and each
adapter: the share drawn as the prompt asks, and each change against the base model's image sorted into errors made
(the base model's background was the prompt's, the adapter's is not), errors mended (the other way round), and one
wrong background for another.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from efficacy_testbed import kept_prompts, sort_changes  # noqa: E402  (benchmarks/ is not a package)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapters", nargs="+")
    p.add_argument("--model", default="testbed")
    p.add_argument("--seed", type=int, default=0, help="first evaluation seed (the efficacy table's: 0)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--json", help="also write every count here")
    args = p.parse_args(argv)

    from duo_unlearn.trainer.detectors.colour import read_image
    from duo_unlearn.trainer.errors import UserError
    from duo_unlearn.trainer.evaluate.methods import BASE, NEGATIVE, Method, activated, adapter_method, load_adapters
    from duo_unlearn.trainer.evaluate.run import generate
    from duo_unlearn.trainer.models import load_model
    from duo_unlearn.trainer.presets import get_preset
    from duo_unlearn.trainer.testbed.shapes import full_prompt

    preset = get_preset("testbed-red")
    taken: set[str] = set()
    try:
        adapters = [adapter_method(a, taken=taken) for a in args.adapters]
    except UserError as e:
        raise SystemExit(f"background_truth_testbed: {e}") from None
    methods = [Method("base", BASE), Method("negative prompt", NEGATIVE, negative_prompt="red"), *adapters]
    pipe = load_model(args.model).pipe
    pipe.set_progress_bar_config(disable=True)
    load_adapters(pipe, methods)
    _, specs = kept_prompts("red")
    prompts = [full_prompt(*spec) for spec in specs]
    asked = [spec[2] for spec in specs for _ in range(args.images_per_prompt)]
    drawn = {}
    for m in methods:
        with activated(pipe, m) as negative:
            images = generate(pipe, prompts, args.images_per_prompt, args.seed, preset.sample_steps, preset.guidance,
                              negative)
        drawn[m.name] = [read_image(im).background for im in images]
    rows = {name: sort_changes(asked, drawn["base"], now) for name, now in drawn.items()}
    print("method | as asked | changed from base | made wrong | mended | wrong to wrong | changes")
    for name, r in rows.items():
        moves = ", ".join(f"{k} {v}" for k, v in sorted(r["transitions"].items(), key=lambda kv: -kv[1]))
        print(f"{name} | {r['as_asked']}/{r['images']} | {r['changed']} | {r['made_wrong']} | {r['mended']} | "
              f"{r['wrong_to_wrong']} | {moves}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "adapters": args.adapters, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
