"""The pack's one server route: an adapter's DUO facts for the browser, read from the safetensors header.

GET /duo_unlearn/adapter_facts?name=<a name of the loras list>[&ckpt=<checkpoint name>]
Only names ComfyUI itself lists under "loras" are answered, so no path can be smuggled in.
"""
from __future__ import annotations

import sys

ROUTE = "/duo_unlearn/adapter_facts"


def facts_payload(name: str, ckpt: str | None) -> tuple[int, dict]:
    from ..trainer.errors import UserError
    from . import host
    from .facts import SHOWN, base_model_matches, read_facts, summary

    try:
        path = host.lora_path(name)
    except UserError as e:
        return 404, {"error": str(e)}
    try:
        info = read_facts(path)
    except Exception as e:  # a broken file is the user's to know about, not a server error
        return 422, {"error": f"{name} is not a readable safetensors file ({type(e).__name__})"}
    facts = {k: info["facts"][k] for k in SHOWN if k in info["facts"]}
    return 200, {"name": name, "is_duo": info["is_duo"], "facts": facts,
                 "matches_checkpoint": base_model_matches(info["facts"], ckpt), "checkpoint": ckpt,
                 "text": summary(name, info, ckpt)}


def register_routes() -> bool:
    """Add the route to ComfyUI's running server; outside ComfyUI (no server module loaded) do nothing."""
    if "server" not in sys.modules:  # never import ComfyUI's server ourselves: it is heavy and not ours
        return False
    prompt_server = getattr(getattr(sys.modules["server"], "PromptServer", None), "instance", None)
    if prompt_server is None:
        return False
    from aiohttp import web

    @prompt_server.routes.get(ROUTE)
    async def adapter_facts(request):
        name = request.rel_url.query.get("name", "")
        status, payload = facts_payload(name, request.rel_url.query.get("ckpt") or None)
        return web.json_response(payload, status=status)

    return True
