-- The local vector store of the flow runtime's FAISS, Chroma and Knowledge
-- components: collections of embedded documents per tenant and project.
-- A collection remembers the embeddings model and the length of its
-- vectors, which every later add and query must match. Vectors are kept as
-- base64 of little-endian float32s (one format on both engines).

CREATE TABLE vector_collections (
    tenant_id  TEXT NOT NULL,
    project_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    model      TEXT NOT NULL,
    dimensions INTEGER NOT NULL,
    doc_count  INTEGER NOT NULL,
    next_seq   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, project_id, name)
);

CREATE TABLE vector_docs (
    tenant_id  TEXT NOT NULL,
    project_id TEXT NOT NULL,
    collection TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    text       TEXT NOT NULL,
    meta       TEXT NOT NULL,
    vector     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, project_id, collection, seq)
);
CREATE INDEX vector_docs_hash ON vector_docs (tenant_id, project_id, collection, hash);
