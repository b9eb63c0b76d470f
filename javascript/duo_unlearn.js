// A1111 / Forge: hover help for the DUO Unlearn tab's fields, and "copy <lora:name:1> to prompt" in its Compare tab.
// Top-level javascript/*.js is injected by A1111 into every page; ComfyUI's code lives in javascript/comfyui/.
(function () {
  const HELP = {
    duo_model: "The base model the adapter is trained for (the checkpoint selected at the top of the web UI).",
    duo_preset: "Prompts, detector and recipe of a concept set. 'custom' uses your prompt boxes.",
    duo_concept: "Multi-concept presets (violence) train one adapter per concept; pick one, or all.",
    duo_unsafe: "Prompts that show the concept, one per line: the images DUO learns to move away from.",
    duo_safe: "The same prompts without the concept, one per line: SDEdit twins keep the layout.",
    duo_pairs: "How many unsafe/safe image pairs to generate for training.",
    duo_beta: "β of the DPO loss: higher stays closer to the base model, lower unlearns harder.",
    duo_steps: "Training steps; the official recipe uses 1000.",
    duo_rank: "LoRA rank of the adapter (alpha follows it).",
    duo_out_name: "Saved as <name>.safetensors in the LoRA folder; an existing file is kept unless you allow overwriting.",
    duo_strength: "SDEdit strength for the safe twins (0: the preset's).",
    duo_lr: "Learning rate (0: 3e-4·100/β).",
    duo_seed: "Same seed and settings give the same pairs and, on CPU, the same adapter.",
    duo_batch: "Pairs per training step.",
    duo_detector: "Which detector gates the unsafe images: none, nudenet, colour:red …",
    duo_config_dir: "A diffusers folder of the same family, for single-file checkpoints when offline.",
    duo_cmp_prompt: "The prompt rendered with and without the adapters, same seed.",
    duo_cmp_seed: "Both images use this seed, so only the adapters differ.",
  };

  function gradio() {
    return typeof gradioApp === "function" ? gradioApp() : document;
  }

  function addHelp(root) {
    for (const [id, text] of Object.entries(HELP)) {
      const el = root.querySelector(`#${id}`);
      if (el && !el.title) el.title = text;
    }
  }

  function chosenAdapters(root) {
    const tags = [];
    for (let k = 0; k < 8; k++) {
      const box = root.querySelector(`#duo_adapter_${k}`);
      if (!box) break;
      const input = box.querySelector("input");
      const name = (input?.value || box.querySelector(".single-select")?.textContent || "").trim();
      const weight = parseFloat(root.querySelector(`#duo_weight_${k} input[type=number]`)?.value || "1");
      if (name && name !== "None" && name !== "(none)") tags.push(`<lora:${name}:${isNaN(weight) ? 1 : weight}>`);
    }
    return tags;
  }

  function copyToPrompt(root) {
    const tags = chosenAdapters(root);
    if (!tags.length) return;
    const prompt = root.querySelector("#txt2img_prompt textarea");
    const text = tags.join(" ");
    if (prompt) {
      prompt.value = `${prompt.value.trim()} ${text}`.trim();
      if (typeof updateInput === "function") updateInput(prompt);  // tells gradio the box changed
    }
    navigator.clipboard?.writeText(text).catch(() => {});
  }

  function addCopyButton(root) {
    const refresh = root.querySelector("#duo_refresh");
    if (!refresh || root.querySelector("#duo_copy_lora")) return;
    const button = document.createElement("button");
    button.id = "duo_copy_lora";
    button.className = refresh.className;
    button.textContent = "Copy <lora:name:1> to prompt";
    button.title = "Append the chosen adapters as <lora:name:weight> to the txt2img prompt (and the clipboard)";
    button.addEventListener("click", (e) => { e.preventDefault(); copyToPrompt(root); });
    refresh.after(button);
  }

  function setup() {
    const root = gradio();
    addHelp(root);
    addCopyButton(root);
  }

  if (typeof onUiLoaded === "function") onUiLoaded(setup);
  else document.addEventListener("DOMContentLoaded", setup);
  if (typeof onUiUpdate === "function") onUiUpdate(() => { const r = gradio(); addHelp(r); addCopyButton(r); });
})();
