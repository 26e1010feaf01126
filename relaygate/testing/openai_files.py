"""The rest of OpenAI's REST API in the emulator, for passthrough tests: files, batches, vector stores, image
generation, moderations, legacy completions and realtime client secrets. State (files, batches, vector stores)
lives on the app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

from relaygate.providers.echo import MAX_CHOICES
from relaygate.testing.base import STATE_KEY, Handler, json_response, send_sse, tracked
from relaygate.testing.openai import (
    MAX_BEST_OF,
    MAX_IMAGES,
    auth_error,
    error_body,
    first_out_of_range,
    out_of_range,
)

if TYPE_CHECKING:
    from relaygate.testing.openai import OpenAIEmulatorOptions

FILES_KEY: web.AppKey[dict[str, tuple[dict[str, Any], bytes]]] = web.AppKey("emulator_files", dict)
BATCHES_KEY: web.AppKey[dict[str, dict[str, Any]]] = web.AppKey("emulator_batches", dict)
STORES_KEY: web.AppKey[dict[str, dict[str, Any]]] = web.AppKey("emulator_vector_stores", dict)
FLAGGED_WORDS = {"kill": "violence", "hate": "hate", "weapon": "illicit"}
CATEGORIES = ("harassment", "hate", "illicit", "self-harm", "sexual", "violence")
CONTENT_CHUNK = 16384


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG image of one colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def not_found(what: str) -> web.Response:
    return json_response(error_body(404, f"No such {what}"), 404)


def add_passthrough_routes(app: web.Application, opts: OpenAIEmulatorOptions) -> None:
    app[FILES_KEY] = {}
    app[BATCHES_KEY] = {}
    app[STORES_KEY] = {}

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            denied = auth_error(request, opts, False)
            if denied is not None:
                return denied
            state = request.app[STATE_KEY]
            state.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                                   "headers": {k.lower(): v for k, v in request.headers.items()}})
            plan = state.take_fault(request.path)
            if plan is not None and plan.status:
                return json_response(error_body(plan.status, plan.message, plan.error_code), plan.status)
            request["fault"] = plan  # the rest of it (stream framing, delays) is the handler's
            return await handler(request)
        return tracked(wrapper)

    async def json_of(request: web.Request) -> dict[str, Any]:
        body = orjson.loads(await request.read() or b"{}")
        request.app[STATE_KEY].requests[-1]["json"] = body
        return body if isinstance(body, dict) else {}

    async def upload_file(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        purpose, name, content = None, "file", b""
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.filename is not None:
                name, content = part.filename, await part.read()
            elif part.name == "purpose":
                purpose = await part.text()
        if not purpose:
            return json_response(error_body(400, "Missing required parameter: 'purpose'."), 400)
        fid = "file-" + hashlib.sha256(content + name.encode() + os.urandom(4)).hexdigest()[:24]
        obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": name, "purpose": purpose, "status": "processed", "expires_at": None}
        request.app[FILES_KEY][fid] = (obj, content)
        return json_response(obj)

    async def list_files(request: web.Request) -> web.StreamResponse:
        data = [o for o, _ in request.app[FILES_KEY].values()]
        return json_response({"object": "list", "data": data, "has_more": False,
                              "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    async def file_op(request: web.Request) -> web.StreamResponse:
        fid, files = request.match_info["id"], request.app[FILES_KEY]
        if fid not in files:
            return not_found(f"file: {fid}")
        if request.method == "DELETE":
            del files[fid]
            return json_response({"id": fid, "object": "file", "deleted": True})
        return json_response(files[fid][0])

    async def file_content(request: web.Request) -> web.StreamResponse:
        fid = request.match_info["id"]
        if fid not in request.app[FILES_KEY]:
            return not_found(f"file: {fid}")
        content = request.app[FILES_KEY][fid][1]
        resp = web.StreamResponse(headers={"content-type": "application/octet-stream",
                                           "content-disposition": f'attachment; filename="{fid}"'})
        await resp.prepare(request)
        for i in range(0, len(content), CONTENT_CHUNK):
            await resp.write(content[i:i + CONTENT_CHUNK])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def create_batch(request: web.Request) -> web.StreamResponse:
        body = await json_of(request)
        if body.get("input_file_id") not in request.app[FILES_KEY]:
            return not_found(f"file: {body.get('input_file_id')}")
        bid = "batch_" + os.urandom(12).hex()
        now = int(time.time())
        batch = {"id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                 "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
                 "status": "validating", "created_at": now, "expires_at": now + 86400,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata")}
        request.app[BATCHES_KEY][bid] = batch
        return json_response(batch)

    async def list_batches(request: web.Request) -> web.StreamResponse:
        return json_response({"object": "list", "data": list(request.app[BATCHES_KEY].values()), "has_more": False})

    async def get_batch(request: web.Request) -> web.StreamResponse:
        batch = request.app[BATCHES_KEY].get(request.match_info["id"])
        return json_response(batch) if batch else not_found("batch")

    async def cancel_batch(request: web.Request) -> web.StreamResponse:
        batch = request.app[BATCHES_KEY].get(request.match_info["id"])
        if not batch:
            return not_found("batch")
        batch.update(status="cancelling", cancelling_at=int(time.time()))
        return json_response(batch)

    async def images(request: web.Request) -> web.StreamResponse:
        body = await json_of(request)
        refused = out_of_range(body, "n", 1, MAX_IMAGES)
        if refused is not None:
            return refused
        prompt = str(body.get("prompt") or "")
        n = int(body["n"]) if isinstance(body.get("n"), int) else 1
        colour = tuple(hashlib.sha256(prompt.encode()).digest()[:3])
        image = base64.b64encode(png(8, 8, colour)).decode()  # type: ignore[arg-type]
        return json_response({"created": int(time.time()), "data": [{"b64_json": image, "revised_prompt": prompt}
                                                                     for _ in range(n)]})

    async def image_upload(request: web.Request) -> web.StreamResponse:
        """Edits and variations: a multipart form with one or more images; answers ``n`` PNGs."""
        reader = await request.multipart()
        fields: dict[str, str] = {}
        images = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.filename is not None:
                images += len(await part.read()) > 0
            elif part.name:
                fields[part.name] = await part.text()
        request.app[STATE_KEY].requests[-1]["form"] = fields
        if not images:
            return json_response(error_body(400, "Missing required parameter: 'image'."), 400)
        n = int(fields["n"]) if fields.get("n", "").isdigit() else 1
        image = base64.b64encode(png(8, 8, (0, 128, 255))).decode()
        return json_response({"created": int(time.time()), "data": [{"b64_json": image} for _ in range(n)]})

    async def moderations(request: web.Request) -> web.StreamResponse:
        body = await json_of(request)
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs or []]
        results = []
        for text in texts:
            hits = {cat for word, cat in FLAGGED_WORDS.items() if word in text.lower()}
            results.append({"flagged": bool(hits), "categories": {c: c in hits for c in CATEGORIES},
                            "category_scores": {c: 0.99 if c in hits else 0.001 for c in CATEGORIES},
                            "category_applied_input_types": {c: ["text"] for c in CATEGORIES}})
        return json_response({"id": "modr-" + os.urandom(8).hex(), "model": body.get("model") or "omni-moderation",
                              "results": results})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await json_of(request)
        refused = first_out_of_range(body, ("n", 1, MAX_CHOICES), ("best_of", 0, MAX_BEST_OF))
        if refused is not None:
            return refused
        prompt = str(body["prompt"]) if isinstance(body.get("prompt"), str) else ""
        words = f"Completion of: {prompt}".split(" ")
        cid, model = "cmpl-" + hashlib.sha1(prompt.encode()).hexdigest()[:24], body.get("model")
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                 "total_tokens": len(prompt.split()) + len(words)}
        if not body.get("stream"):
            return json_response({"id": cid, "object": "text_completion", "created": int(time.time()),
                                  "model": model, "usage": usage, "choices": [
                                      {"index": 0, "text": " ".join(words), "finish_reason": "stop",
                                       "logprobs": None}]})
        frames = []
        for i, w in enumerate(words):
            chunk = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                     "choices": [{"index": 0, "text": w if i == 0 else " " + w, "logprobs": None,
                                  "finish_reason": "stop" if i == len(words) - 1 else None}]}
            frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage"):  # OpenAI's last chunk: no choices, the usage
            frames.append(b"data: " + orjson.dumps({"id": cid, "object": "text_completion", "created": int(
                time.time()), "model": model, "choices": [], "usage": usage}) + b"\n\n")
        return await send_sse(request, frames, request.get("fault"))

    async def client_secret(request: web.Request) -> web.StreamResponse:
        body = await json_of(request)
        session: dict[str, Any] = body["session"] if isinstance(body.get("session"), dict) else {}
        return json_response({"value": "ek_" + os.urandom(16).hex(), "expires_at": int(time.time()) + 600,
                              "session": {"type": "realtime", "object": "realtime.session",
                                          "id": "sess_" + os.urandom(8).hex(), **session}})

    async def create_store(request: web.Request) -> web.StreamResponse:
        body = await json_of(request)
        files = [f for f in body.get("file_ids") or () if isinstance(f, str)]
        vid = "vs_" + os.urandom(12).hex()
        obj: dict[str, Any] = {"id": vid, "object": "vector_store", "created_at": int(time.time()),
               "name": body.get("name"), "usage_bytes": 0, "status": "completed", "metadata": body.get("metadata") or {},
               "file_counts": {"in_progress": 0, "completed": len(files), "failed": 0, "cancelled": 0,
                               "total": len(files)}, "expires_after": None, "expires_at": None, "last_active_at": None}
        request.app[STORES_KEY][vid] = obj
        return json_response(obj)

    async def list_stores(request: web.Request) -> web.StreamResponse:
        """OpenAI's cursor page: ``limit``, ``order`` (newest first unless ``asc``), ``after``."""
        stores = list(request.app[STORES_KEY].values())
        if request.query.get("order", "desc") != "asc":
            stores.reverse()
        after = request.query.get("after")
        if after is not None:
            ids = [v["id"] for v in stores]
            stores = stores[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = stores[:limit]
        return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None, "has_more": len(stores) > limit})

    async def store_op(request: web.Request) -> web.StreamResponse:
        stores = request.app[STORES_KEY]
        sid = request.match_info["id"]
        if sid not in stores:
            return not_found("vector store")
        if request.method == "DELETE":
            del stores[sid]
            return json_response({"id": sid, "object": "vector_store.deleted", "deleted": True})
        return json_response(stores[sid])

    for method, path, handler in [
        ("POST", "/v1/vector_stores", create_store), ("GET", "/v1/vector_stores", list_stores),
        ("GET", "/v1/vector_stores/{id}", store_op), ("DELETE", "/v1/vector_stores/{id}", store_op),
        ("POST", "/v1/files", upload_file), ("GET", "/v1/files", list_files), ("GET", "/v1/files/{id}", file_op),
        ("DELETE", "/v1/files/{id}", file_op), ("GET", "/v1/files/{id}/content", file_content),
        ("POST", "/v1/batches", create_batch), ("GET", "/v1/batches", list_batches),
        ("GET", "/v1/batches/{id}", get_batch), ("POST", "/v1/batches/{id}/cancel", cancel_batch),
        ("POST", "/v1/images/generations", images), ("POST", "/v1/images/edits", image_upload),
        ("POST", "/v1/images/variations", image_upload), ("POST", "/v1/moderations", moderations),
        ("POST", "/v1/completions", completions), ("POST", "/v1/realtime/client_secrets", client_secret),
    ]:
        app.router.add_route(method, path, guarded(handler))
