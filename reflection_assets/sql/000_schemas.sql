-- One schema per stage of the pipeline. Applied on every first connection: idempotent.
CREATE SCHEMA IF NOT EXISTS registry;
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS oracle;
CREATE SCHEMA IF NOT EXISTS lineage;
CREATE SCHEMA IF NOT EXISTS training;
CREATE SCHEMA IF NOT EXISTS reflect;  -- not "reflection": the default file reflection.duckdb is a catalog of that name
CREATE SCHEMA IF NOT EXISTS bench;
CREATE SCHEMA IF NOT EXISTS selection;  -- student scores (IFD, r-IFD) and the student-selected set (V2)
