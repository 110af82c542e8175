"""The HTTP API (Litestar): controllers, wire schemas, auth and error mapping."""
