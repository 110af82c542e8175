"""Response bodies read with bounded memory, even from a server that compresses unasked."""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import httpx._decoders

# Content codings. gzip and deflate are inflated here (x-gzip and x-deflate are their old
# names). The other compressions are refused unless httpx decodes them (br and zstd, only
# with their packages installed): read undecoded, a body would be binary. Any other token
# (`none`, `UTF-8`, sent by misconfigured servers) means nothing, as httpx takes it.
_INFLATED = frozenset({"gzip", "deflate"})
_ALIASES = {"x-gzip": "gzip", "x-deflate": "deflate"}
_COMPRESSIONS = frozenset({"br", "zstd", "compress", "x-compress", "pack200-gzip", "aes128gcm"})
_DECODABLE = frozenset(httpx._decoders.SUPPORTED_DECODERS)
_PIECE_BYTES = 2**20  # inflated at most this much at a time
_GZIP_MAGIC = b"\x1f\x8b"


class Undecodable(Exception):
    """The body is compressed more than once over, in a compression not decodable here, or
    its compressed data is broken or cut off; the message says how (`encoded with br, not
    decodable here`)."""


def coding(response: httpx.Response) -> str:
    """The body's one content coding (`identity` when none that means something)."""
    names = (
        name.strip().lower()
        for name in response.headers.get_list("content-encoding", split_commas=True)
    )
    codings = [
        coding
        for coding in (_ALIASES.get(name, name) for name in names)
        if coding in _INFLATED or coding in _COMPRESSIONS
    ]
    if len(codings) > 1:  # each layer multiplies what one compressed chunk expands to
        raise Undecodable(f"encoded {len(codings)} times over ({', '.join(codings)})")
    if not codings:
        return "identity"
    if codings[0] in _COMPRESSIONS and codings[0] not in _DECODABLE:
        raise Undecodable(f"encoded with {codings[0]}, not decodable here")
    return codings[0]


async def decoded(response: httpx.Response, coding: str, piece_bytes: int) -> AsyncGenerator[bytes]:
    """The body decoded, piece by piece. gzip and deflate are inflated here at most
    `piece_bytes` at a time: httpx inflates a whole network chunk at once, and 64 KiB of gzip
    hold 64 MiB. Other codings httpx decodes are left to it."""
    # A response read before (by a transport holding it in memory) has nothing left to bound.
    if coding not in _INFLATED or response.is_stream_consumed:
        async for chunk in response.aiter_bytes():
            yield chunk
        return
    inflater: Any = zlib.decompressobj(zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS)
    # As httpx: deflate is meant to be zlib-wrapped, but some servers send it raw.
    retry_raw = coding == "deflate"
    received = False
    held = b""  # after a gzip member, bytes too few yet to tell whether another one starts
    ended = False  # bytes after the end of the stream are ignored, as by httpx
    async for chunk in response.aiter_raw():
        data = chunk
        received = received or bool(chunk)
        while not ended:
            if inflater is None:  # RFC 1952: a gzip body may be members one after another
                data, held = held + data, b""
                if len(data) < len(_GZIP_MAGIC):
                    held = data
                    break
                if not data.startswith(_GZIP_MAGIC):
                    ended = True
                    break
                inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
            try:
                piece = inflater.decompress(data, piece_bytes)
            except zlib.error as exc:
                if retry_raw:
                    inflater, retry_raw = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise Undecodable(f"not decodable as {coding}: {exc}") from exc
            retry_raw = False
            data = inflater.unconsumed_tail
            if inflater.eof:
                data = inflater.unused_data
                inflater, ended = (None, False) if coding == "gzip" else (inflater, True)
            if not piece and not data:
                break  # chunk used up; zlib holds pending output only while pieces come
            if piece:
                yield piece
    # The connection ended (a body read to its close, or a chunked one ended early on
    # purpose) before the compressed data did: what came is only part of the body.
    if received and inflater is not None and not inflater.eof:
        raise Undecodable(f"cut off: its {coding} data ends early")


async def body(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """At most `max_bytes` of the decoded body, and whether there was more."""
    content = bytearray()
    pieces = decoded(response, coding(response), min(max_bytes + 1, _PIECE_BYTES))
    async for piece in pieces:
        content += piece
        if len(content) > max_bytes:
            await pieces.aclose()
            del content[max_bytes:]
            return bytes(content), True
    return bytes(content), False
