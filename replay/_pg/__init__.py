"""The PostgreSQL store: the only package that imports psycopg.

psycopg is optional (the ``postgres`` extra), so nothing here is imported until an
engine or the ``replay`` command is given a ``postgresql://`` URL; `_url` (no psycopg)
says whether a location is one. `_connect` opens connections, `_schema` holds the
tables and the public views, `_rows` turns records into rows Postgres accepts, `_reads`
the engine's queries, `_store` the engine's store with its group-commit writer,
`_queries` user queries (read-only, views only, under a statement timeout), and
`_purge` retention.
"""
