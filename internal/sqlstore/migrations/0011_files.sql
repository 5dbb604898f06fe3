-- Files a project keeps (uploads through LangFlow's file API, what
-- SaveToFile components write): their metadata. The bytes are on disk,
-- named by id. No foreign keys, as for messages: a file outlives neither
-- check nor cascade of the tenancy tables, and deleting a project is not
-- blocked by its files.
CREATE TABLE files (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    project_id TEXT NOT NULL,
    folder     TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX files_name ON files (tenant_id, project_id, folder, name);
