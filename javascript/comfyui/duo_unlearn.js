// DUO Unlearn front-end for ComfyUI: adapter facts on the nodes, Adapter Info's text, and a before/after slider.
// Served by ComfyUI from WEB_DIRECTORY (javascript/comfyui/); A1111 only injects top-level javascript/*.js.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const FACT_NODES = new Set(["DUOLoraLoader", "DUOLoraStack", "DUOAdapterInfo"]);
const LORA_WIDGET = /^lora_(name|\d+)$/;

// A read-only text box on the node; not saved with the workflow (it is derived from the files).
function factsWidget(node) {
  let w = node.widgets?.find((x) => x.name === "duo_facts");
  if (w) return w;
  const el = document.createElement("textarea");
  el.readOnly = true;
  el.className = "duo-facts";
  el.style.cssText = "width:100%;height:100%;box-sizing:border-box;font:11px monospace;resize:none;" +
    "background:var(--comfy-input-bg,#222);color:var(--input-text,#ddd);border:1px solid #444;border-radius:4px;";
  w = node.addDOMWidget("duo_facts", "duo_text", el, {
    serialize: false, getValue: () => el.value, setValue: (v) => { el.value = v ?? ""; },
    // tall enough for every fact (about 14 px a line at 11 px monospace), so nothing hides behind a scrollbar
    getMinHeight: () => Math.max(90, 14 * ((el.value || "").split("\n").length + 1)),
  });
  w.element = el;
  return w;
}

function setText(node, text) {
  const w = factsWidget(node);
  w.element.value = text;
  const need = node.computeSize?.();  // grow the node to the text's height; never shrink what the user sized
  if (need && need[1] > node.size[1]) node.setSize([Math.max(node.size[0], need[0]), need[1]]);
  node.setDirtyCanvas?.(true, true);
}

// The checkpoint feeding this node's MODEL input, followed upstream through other model-passing nodes.
function upstreamCheckpoint(node, depth = 0) {
  if (!node || depth > 25) return null;
  const ckpt = node.widgets?.find((w) => w.name === "ckpt_name");
  if (ckpt && depth > 0) return ckpt.value;
  const slot = node.inputs?.findIndex((i) => i.type === "MODEL");
  if (slot == null || slot < 0) return null;
  return upstreamCheckpoint(node.getInputNode?.(slot), depth + 1);
}

async function fetchFacts(name, ckpt) {
  const q = new URLSearchParams({ name });
  if (ckpt) q.set("ckpt", ckpt);
  const res = await api.fetchApi(`/duo_unlearn/adapter_facts?${q}`);
  const body = await res.json();
  return res.ok ? body.text : `${name}: ${body.error}`;
}

async function refreshFacts(node) {
  const names = (node.widgets || [])
    .filter((w) => LORA_WIDGET.test(w.name) && w.value && w.value !== "None")
    .map((w) => w.value);
  if (!names.length) return setText(node, "no adapter chosen");
  const ckpt = upstreamCheckpoint(node);
  try {
    const texts = await Promise.all(names.map((n) => fetchFacts(n, ckpt)));
    setText(node, texts.join("\n\n"));
  } catch (e) {
    setText(node, `could not read the adapter's facts: ${e}`);
  }
}

function compareWidget(node) {
  let w = node.widgets?.find((x) => x.name === "duo_slider");
  if (w) return w;
  const box = document.createElement("div");
  box.className = "duo-compare";
  box.style.cssText = "position:relative;width:100%;height:100%;overflow:hidden;";
  const base = document.createElement("img");
  const after = document.createElement("img");
  for (const img of [base, after]) {
    img.style.cssText = "position:absolute;inset:0;width:100%;height:calc(100% - 24px);object-fit:contain;";
  }
  const range = document.createElement("input");
  range.type = "range"; range.min = "0"; range.max = "100"; range.value = "50";
  range.title = "left: base, right: unlearned";
  range.style.cssText = "position:absolute;left:0;right:0;bottom:0;width:100%;";
  // the unlearned image covers the base from the slider's position rightwards
  const clip = () => { after.style.clipPath = `inset(0 0 0 ${range.value}%)`; };
  range.addEventListener("input", clip);
  clip();
  box.append(base, after, range);
  w = node.addDOMWidget("duo_slider", "duo_compare", box, { serialize: false, getMinHeight: () => 220 });
  Object.assign(w, { base, after, range });
  return w;
}

function viewUrl(img) {
  const q = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder || "", type: img.type });
  return api.apiURL(`/view?${q}`);
}

app.registerExtension({
  name: "duo_unlearn.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData.name;
    if (FACT_NODES.has(name)) {
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = created?.apply(this, arguments);
        factsWidget(this);
        for (const w of this.widgets || []) {
          if (!LORA_WIDGET.test(w.name)) continue;
          const cb = w.callback;
          w.callback = (...args) => { const out = cb?.apply(w, args); refreshFacts(this); return out; };
        }
        queueMicrotask(() => refreshFacts(this));
        return r;
      };
      const configured = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const r = configured?.apply(this, arguments);
        setTimeout(() => refreshFacts(this), 0);  // widget values arrive with the workflow
        return r;
      };
      const connections = nodeType.prototype.onConnectionsChange;
      nodeType.prototype.onConnectionsChange = function () {
        const r = connections?.apply(this, arguments);
        setTimeout(() => refreshFacts(this), 0);  // another checkpoint upstream: re-check the match
        return r;
      };
    }
    if (name === "DUOAdapterInfo" || name === "DUOUnlearn") {
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        const r = executed?.apply(this, arguments);
        if (message?.text) setText(this, message.text.join("\n"));
        if (name === "DUOUnlearn") app.refreshComboInNodes?.();  // the new adapter is selectable at once
        return r;
      };
    }
    if (name === "DUOCompareImages") {
      const executed = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        const r = executed?.apply(this, arguments);
        const pair = message?.duo_compare;
        if (pair?.length === 2) {
          const w = compareWidget(this);
          w.base.src = viewUrl(pair.find((p) => p.role === "base"));
          w.after.src = viewUrl(pair.find((p) => p.role === "unlearned"));
          this.setDirtyCanvas?.(true, true);
        }
        return r;
      };
    }
  },
});
