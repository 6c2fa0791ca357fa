"""The gateway's KServe v2 HTTP/REST front end: the same rules as its gRPC side, for ``same``.

- :mod:`.server`: the aiohttp server, each request through the gateway's rules;
- :mod:`.routes`: which gRPC method a KServe v2 path stands for, and which paths are refused;
- :mod:`.codec`: REST bodies to and from the gRPC protobufs;
- :mod:`.tensors`: JSON and binary tensors to raw bytes and back;
- :mod:`.errors`: how a request fails, in HTTP's words.
"""
