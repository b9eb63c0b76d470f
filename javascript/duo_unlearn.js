// A1111 / Forge: hover help for the DUO Unlearn tab's fields, and "copy <lora:name:1> to prompt" in its Compare tab.
// Top-level javascript/*.js is injected by A1111 into every page; ComfyUI's code lives in javascript/comfyui/.
// The standalone app (`duo-unlearn ui`) runs this same file from a load event (extension/app.py), after the page
// is built: there is no onUiLoaded/onUiUpdate there, so it starts at once and watches the page for new elements.
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
    duo_lr_scheduler: "How the learning rate changes over the steps. constant is the official recipe; cosine and linear fall to 0 by the last step.",
    duo_lr_warmup: "Steps over which the learning rate rises from 0 at the start (needs a schedule other than constant). 0 = none.",
    duo_seed: "Same seed and settings give the same pairs and, on CPU, the same adapter.",
    duo_batch: "Pairs per training step.",
    duo_detector: "Which detector gates the unsafe images: none, nudenet, colour:red …",
    duo_twin_negative: "The negative prompt the safe twins are drawn with. {unsafe} stands for the pair's unsafe prompt (the paper's); the concept's own words (red) push the twin off the concept only, not off the shape or scene the prompt also names. Blank = the preset's.",
    duo_config_dir: "A diffusers folder of the same family, for single-file checkpoints when offline.",
    duo_device: "Where the job runs: auto (a CUDA or Apple GPU when there is one), cpu, cuda, cuda:1, mps.",
    duo_mixed_precision: "Frozen weights in half precision on a GPU (the LoRA and optimizer stay fp32). auto: bf16 where the card supports it, else fp16; fp32 on the CPU.",
    duo_gradient_checkpointing: "Recompute activations to save memory. auto: on when the estimated need exceeds free memory.",
    duo_resolution: "Pairs and training at this size (a multiple of 8); 0 = the model's native size (512 SD 1.x, 1024 SDXL/SD3).",
    duo_micro_batch: "Pairs per forward pass; gradients accumulate so a step still sees all its pairs. 0 = all at once (halved automatically on out-of-memory).",
    duo_retain_prompts: "Images of these prompts (the base model's) are held as they are while the concept is removed: close concepts, other subjects. Blank = the preset's.",
    duo_num_retain: "How many retain images to make with the pairs. Blank = the preset's; 0 = none (the paper's DUO). Fewer is faster and keeps less.",
    duo_lam_retain: "How strongly the retain images are held. Blank = the preset's; 0 = off. Too high and the concept stays.",
    duo_concept_directions: "Each LoRA layer reads only this many input directions: those where the concept's features stand out most against the retain images'. Inputs with nothing there pass unchanged. Needs retain images. A share such as 0.5 = that share of each layer's inputs; auto = per layer, those where they stand out more than the layer's average. Blank = the preset's; 0 = off.",
    duo_close_concepts: "Words of the retain prompts that name concepts close to the one removed (orange beside red): their images count more when the directions are chosen. Blank = the preset's.",
    duo_close_weight: "How many more times the close concepts' retain images count. Blank = the preset's; 0 = like every other retain image.",
    duo_model_family: "The model's family, read from its files without loading it: SD 1.x, SD 2.x, SDXL, SD3 or Flux.",
    duo_cmp_prompt: "The prompt rendered with and without the adapters, same seed.",
    duo_cmp_seed: "Both images use this seed, so only the adapters differ.",
  };

  function gradio() {
    if (typeof gradioApp === "function") return gradioApp();
    return document.querySelector("gradio-app")?.shadowRoot || document;
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
    const host = !!root.querySelector("#txt2img_prompt");  // A1111/Forge; standalone: the clipboard only
    button.textContent = host ? "Copy <lora:name:1> to prompt" : "Copy <lora:name:1>";
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
  else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
  if (typeof onUiUpdate === "function") onUiUpdate(setup);
  else {  // standalone gradio: tabs may render their content only when first shown
    let pending = false;
    new MutationObserver(() => {
      if (pending) return;
      pending = true;
      setTimeout(() => { pending = false; setup(); }, 200);
    }).observe(gradio(), { childList: true, subtree: true });
  }
})();
