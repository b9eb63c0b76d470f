"""UI-format ComfyUI workflows (what the front-end saves and loads): checking them against a server's /object_info,
and writing them from a compact description (tests/comfy_make_workflows.py uses that to regenerate the examples).
"""
from __future__ import annotations

# front-end-only node types: they never reach the server, so /object_info does not list them
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(spec: dict) -> list[tuple[str, object, dict]]:
    out = []
    for group in ("required", "optional"):
        for name, value in (spec["input"].get(group) or {}).items():
            kind = value[0]
            options = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            out.append((name, "COMBO" if isinstance(kind, list) else kind, options))
    return out


def _is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput")


def check_workflow(wf: dict, info: dict) -> list[str]:
    """Every node type known to the server, every link joining an output and an input of its type."""
    problems = []
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        if n["type"] not in info:
            problems.append(f"node {n['id']}: unknown type {n['type']}")
            continue
        spec = info[n["type"]]
        declared = [o["type"] for o in n.get("outputs", [])]
        if declared != list(spec["output"]):
            problems.append(f"node {n['id']} {n['type']}: outputs {declared} != server's {spec['output']}")
        kinds = {name: kind for name, kind, _ in _inputs(spec)}
        for inp in n.get("inputs", []):
            if inp["name"] not in kinds:
                problems.append(f"node {n['id']} {n['type']}: no input named {inp['name']}")
        widgets = [name for name, kind, opt in _inputs(spec) if _is_widget(kind, opt)]
        extra = sum(1 for name, kind, opt in _inputs(spec) if kind == "INT" and opt.get("control_after_generate"))
        if "widgets_values" in n and len(n["widgets_values"]) != len(widgets) + extra:
            problems.append(f"node {n['id']} {n['type']}: {len(n['widgets_values'])} widget values, "
                            f"expected {len(widgets) + extra} ({widgets})")
    for link in wf["links"]:
        link_id, src, src_slot, dst, dst_slot, kind = link[:6]
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: joins missing node {src if src not in nodes else dst}")
            continue
        s, d = nodes[src], nodes[dst]
        out_types = info.get(s["type"], {}).get("output", [])
        if src_slot >= len(out_types) or out_types[src_slot] != kind:
            problems.append(f"link {link_id}: {s['type']} output {src_slot} is not {kind}")
        if dst_slot >= len(d.get("inputs", [])):
            problems.append(f"link {link_id}: {d['type']} has no input slot {dst_slot}")
            continue
        inp = d["inputs"][dst_slot]
        want = {name: k for name, k, _ in _inputs(info[d["type"]])}.get(inp["name"]) if d["type"] in info else None
        if inp.get("link") != link_id or want not in (kind, "*") or inp.get("type") not in (kind, "*"):
            problems.append(f"link {link_id}: {d['type']}.{inp['name']} takes {want}, link carries {kind}")
        if link_id not in (s["outputs"][src_slot].get("links") or []):
            problems.append(f"link {link_id}: not listed on {s['type']} output {src_slot}")
    return problems


def ui_workflow(graph: dict, info: dict, notes: list[tuple[str, list[int]]] = ()) -> dict:
    """graph: {id: {"type", "pos", "values": {widget: value}, "links": {input: (src id, src slot)}, "title"?}}."""
    nodes, links = [], []
    for order, (nid, spec) in enumerate(graph.items()):
        server = info[spec["type"]]
        inputs, values = [], []
        for name, kind, opt in _inputs(server):
            if name in spec.get("links", {}):
                inputs.append({"name": name, "type": kind, "link": None})
            elif _is_widget(kind, opt):
                values.append(spec["values"][name] if name in spec.get("values", {}) else opt.get("default"))
                if kind == "INT" and opt.get("control_after_generate"):
                    values.append("fixed")
        outputs = [{"name": name, "type": kind, "links": [], "slot_index": i}
                   for i, (name, kind) in enumerate(zip(server["output_name"], server["output"]))]
        node = {"id": nid, "type": spec["type"], "pos": list(spec["pos"]), "size": list(spec.get("size", [320, 160])),
                "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": spec["type"]}, "widgets_values": values}
        if "title" in spec:
            node["title"] = spec["title"]
        nodes.append(node)
    by_id = {n["id"]: n for n in nodes}
    for nid, spec in graph.items():
        for name, (src, slot) in spec.get("links", {}).items():
            link_id = len(links) + 1
            d = by_id[nid]
            k = next(i for i, inp in enumerate(d["inputs"]) if inp["name"] == name)
            kind = by_id[src]["outputs"][slot]["type"]
            d["inputs"][k]["link"] = link_id
            by_id[src]["outputs"][slot]["links"].append(link_id)
            links.append([link_id, src, slot, nid, k, kind])
    extra = []
    for i, (text, pos) in enumerate(notes):
        extra.append({"id": 100 + i, "type": "MarkdownNote", "pos": pos, "size": [360, 180], "flags": {}, "order": 0,
                      "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text],
                      "color": "#432", "bgcolor": "#653"})
    return {"id": "00000000-0000-4000-8000-000000000000", "revision": 0,
            "last_node_id": max(by_id) if not extra else 100 + len(extra) - 1, "last_link_id": len(links),
            "nodes": nodes + extra, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "frontendVersion": "1.27.10"}, "version": 0.4}
