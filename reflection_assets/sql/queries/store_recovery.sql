-- `reflection doctor` and `reflection rebuild`: engines/store/recovery.py.

-- name: tables
-- Every table of the store, by schema.
SELECT schema_name, table_name
FROM duckdb_tables()
WHERE database_name = current_database()
ORDER BY ALL;

-- name: read_table
-- Reads every column of every row of {table} ("schema"."name"): hash(t) makes DuckDB
-- verify each block's checksum.
SELECT count(*), sum(hash(t)) FROM {table} AS t;

-- name: table_keys
-- The key columns {keys} of every row of {table}.
SELECT {keys} FROM {table};

-- name: table_rows
SELECT * FROM {table};

-- name: column_types
-- A table's columns and their types, to cast the ledger's text back.
SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ?;

-- name: restore_rows
-- The ledger's rows of {table}, from the polars frame `frame` of text columns: {columns},
-- each read as {casts} (CAST("column" AS its type)).
INSERT INTO {table} ({columns}) SELECT {casts} FROM frame;

-- name: checkpoint
CHECKPOINT;
