"""The live channel: other processes reach the engine that holds a database file.

`_protocol` is the wire format and `_client` the `replay` command's client, both
standard library only. `_connect` (`replay.connect`) and `_aio`
(`replay.connect_async`) are the clients of applications, sharing `_calls`; they
also use the codec, so that values cross as the engine records them. The server
lives in `replay._engine`, which it serves.
"""
