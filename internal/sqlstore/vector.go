package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/vector"
)

// Vectors is the store's vector.Store: collections persisted in the
// database (migration 0011), bounded by its limits.
type Vectors struct {
	s      *Store
	limits vector.Limits
}

var _ vector.Store = (*Vectors)(nil)

// Vectors returns the vector store over this database with limits (zero
// fields: the defaults).
func (s *Store) Vectors(l vector.Limits) *Vectors {
	return &Vectors{s: s, limits: l.WithDefaults()}
}

// hashBatch bounds the placeholders of one duplicate look-up.
const hashBatch = 500

// Add implements vector.Store: in one transaction, the collection row is
// read (locked on PostgreSQL) or created within the project's bound, the
// documents checked and inserted, and the row's count advanced.
func (v *Vectors) Add(ctx context.Context, k vector.Key, model string, docs []vector.Doc, opt vector.AddOptions) (int, error) {
	added := 0
	err := v.s.tx(ctx, v.s.w, func(tx *sql.Tx) error {
		q := func(query string, args ...any) *sql.Row {
			return tx.QueryRowContext(ctx, v.s.d.rebind(query), args...)
		}
		exec := func(query string, args ...any) error {
			_, err := tx.ExecContext(ctx, v.s.d.rebind(query), args...)
			return err
		}
		lock := ""
		if v.s.d.dollar {
			lock = " FOR UPDATE"
		}
		var info vector.Info
		var next int64
		err := q(`SELECT model, dimensions, doc_count, next_seq FROM vector_collections WHERE tenant_id = ? AND project_id = ? AND name = ?`+lock,
			k.TenantID, k.ProjectID, k.Collection).Scan(&info.Model, &info.Dimensions, &info.Count, &next)
		exists := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return dbError(err, "read vector collection")
		}
		if opt.Replace {
			info = vector.Info{}
		}
		keep := docs
		hashes := make([]string, len(docs))
		for i, d := range docs {
			hashes[i] = d.Hash()
		}
		if opt.SkipDuplicates {
			stored := map[string]bool{}
			if exists && !opt.Replace {
				if stored, err = v.storedHashes(ctx, tx, k, hashes); err != nil {
					return err
				}
			}
			keep, hashes = dedupe(docs, hashes, stored)
		}
		if err := vector.Check(v.limits, k, info, model, keep, len(keep)); err != nil {
			return err
		}
		if len(keep) == 0 && !opt.Replace {
			return nil
		}
		now := time.Now().UnixMicro()
		if !exists {
			var n int
			if err := q(`SELECT COUNT(*) FROM vector_collections WHERE tenant_id = ? AND project_id = ?`, k.TenantID, k.ProjectID).Scan(&n); err != nil {
				return dbError(err, "count vector collections")
			}
			if n >= v.limits.MaxCollections {
				return vector.FullProject(v.limits, k)
			}
			if err := exec(`INSERT INTO vector_collections (tenant_id, project_id, name, model, dimensions, doc_count, next_seq, updated_at) VALUES (?, ?, ?, '', 0, 0, 0, ?)`,
				k.TenantID, k.ProjectID, k.Collection, now); err != nil {
				if v.s.d.isUnique(err) {
					return &errs.Error{Code: errs.Conflict, Message: "the collection was created by another run at the same time; try again", Err: err}
				}
				return dbError(err, "create vector collection")
			}
		}
		if opt.Replace {
			if err := exec(`DELETE FROM vector_docs WHERE tenant_id = ? AND project_id = ? AND collection = ?`, k.TenantID, k.ProjectID, k.Collection); err != nil {
				return dbError(err, "empty vector collection")
			}
		}
		stmt, err := tx.PrepareContext(ctx, v.s.d.rebind(`INSERT INTO vector_docs (tenant_id, project_id, collection, seq, hash, text, meta, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`))
		if err != nil {
			return dbError(err, "add vectors")
		}
		defer stmt.Close()
		for i, d := range keep {
			meta := string(d.Meta)
			if meta == "" {
				meta = "null"
			}
			if _, err := stmt.ExecContext(ctx, k.TenantID, k.ProjectID, k.Collection, next+int64(i), hashes[i], d.Text, meta, vector.EncodeVector(d.Vector)); err != nil {
				return dbError(err, "add vectors")
			}
		}
		if len(keep) > 0 {
			info.Model, info.Dimensions = model, len(keep[0].Vector)
		}
		if err := exec(`UPDATE vector_collections SET model = ?, dimensions = ?, doc_count = ?, next_seq = ?, updated_at = ? WHERE tenant_id = ? AND project_id = ? AND name = ?`,
			info.Model, info.Dimensions, info.Count+len(keep), next+int64(len(keep)), now, k.TenantID, k.ProjectID, k.Collection); err != nil {
			return dbError(err, "update vector collection")
		}
		added = len(keep)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return added, nil
}

// dedupe drops the documents whose hash is stored or earlier in the batch.
func dedupe(docs []vector.Doc, hashes []string, stored map[string]bool) ([]vector.Doc, []string) {
	keep, kh := make([]vector.Doc, 0, len(docs)), make([]string, 0, len(docs))
	seen := map[string]bool{}
	for i, d := range docs {
		if stored[hashes[i]] || seen[hashes[i]] {
			continue
		}
		seen[hashes[i]] = true
		keep, kh = append(keep, d), append(kh, hashes[i])
	}
	return keep, kh
}

// storedHashes returns which of hashes the collection has.
func (v *Vectors) storedHashes(ctx context.Context, tx *sql.Tx, k vector.Key, hashes []string) (map[string]bool, error) {
	out := map[string]bool{}
	for start := 0; start < len(hashes); start += hashBatch {
		part := hashes[start:min(start+hashBatch, len(hashes))]
		args := []any{k.TenantID, k.ProjectID, k.Collection}
		for _, h := range part {
			args = append(args, h)
		}
		rows, err := tx.QueryContext(ctx, v.s.d.rebind(`SELECT hash FROM vector_docs WHERE tenant_id = ? AND project_id = ? AND collection = ? AND hash IN (?`+
			strings.Repeat(", ?", len(part)-1)+`)`), args...)
		if err != nil {
			return nil, dbError(err, "read vector hashes")
		}
		hs, err := collect(rows, func(r *sql.Rows) (*string, error) {
			var h string
			return &h, r.Scan(&h)
		})
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			out[*h] = true
		}
	}
	return out, nil
}

// Search implements vector.Store: it reads the collection's vectors (at
// most MaxPerCollection) and ranks them in memory.
func (v *Vectors) Search(ctx context.Context, k vector.Key, q []float32, n int) ([]vector.Hit, error) {
	info, err := v.Info(ctx, k)
	if err != nil {
		return nil, err
	}
	if err := vector.CheckQuery(k, info, q); err != nil {
		return nil, err
	}
	if info.Count == 0 {
		return nil, nil
	}
	rows, err := v.s.r.QueryContext(ctx, v.s.d.rebind(`SELECT text, meta, vector FROM vector_docs WHERE tenant_id = ? AND project_id = ? AND collection = ? ORDER BY seq`),
		k.TenantID, k.ProjectID, k.Collection)
	if err != nil {
		return nil, dbError(err, "read vectors")
	}
	docs, err := collect(rows, func(r *sql.Rows) (*vector.Doc, error) {
		var d vector.Doc
		var meta, vec string
		if err := r.Scan(&d.Text, &meta, &vec); err != nil {
			return nil, err
		}
		d.Meta = []byte(meta)
		d.Vector, err = vector.DecodeVector(vec)
		return &d, err
	})
	if err != nil {
		return nil, err
	}
	all := make([]vector.Doc, len(docs))
	for i, d := range docs {
		all[i] = *d
	}
	return vector.Rank(all, q, n), nil
}

// Limits implements vector.Store.
func (v *Vectors) Limits() vector.Limits { return v.limits }

// Info implements vector.Store.
func (v *Vectors) Info(ctx context.Context, k vector.Key) (vector.Info, error) {
	var info vector.Info
	err := v.s.r.QueryRowContext(ctx, v.s.d.rebind(`SELECT model, dimensions, doc_count FROM vector_collections WHERE tenant_id = ? AND project_id = ? AND name = ?`),
		k.TenantID, k.ProjectID, k.Collection).Scan(&info.Model, &info.Dimensions, &info.Count)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return info, dbError(err, "read vector collection")
	}
	if info.Count == 0 {
		return vector.Info{}, nil
	}
	return info, nil
}
