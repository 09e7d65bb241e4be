"""The live channel: other processes reach the engine that holds a database file.

`_protocol` is the wire format and `_client` the `replay` command's client, both
standard library only. `_connect` (`replay.connect`) and `_aio`
(`replay.connect_async`) are the clients of applications, sharing `_calls`; they
also use the codec, so that values cross as the engine records them. Under both,
`_transport` carries each call on a connection of its own; `_handles` holds the run
handles they return and `_watching` their watches. The server lives in
`replay._engine`, which it serves.
"""
