package sqlstore

import (
	"context"
	"database/sql"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
)

// ---- files ----

var _ files.Store = (*Store)(nil)

const fileCols = "id, tenant_id, project_id, folder, name, size, sha256, created_by, created_at"

func scanFile(r scanner) (*files.File, error) {
	var f files.File
	var c int64
	if err := r.Scan(&f.ID, &f.TenantID, &f.ProjectID, &f.Folder, &f.Name, &f.Size, &f.SHA256, &f.CreatedBy, &c); err != nil {
		return nil, err
	}
	f.CreatedAt = fromMicros(c)
	return &f, nil
}

// InsertFile records a file (in place of replaces, unless "") unless its project's files would pass quota
// bytes. The sum and the insert are one transaction, serialised per project
// (SQLite has one writer; on PostgreSQL an advisory lock per project), so that two
// uploads at once cannot both fit in the last free bytes.
func (s *Store) InsertFile(ctx context.Context, f *files.File, quota int64, replaces string) error {
	return s.tx(ctx, s.w, func(tx *sql.Tx) error {
		c := &conn{ctx: ctx, tx: tx, d: s.d}
		if s.d.name == postgres.name {
			// A transaction-scoped advisory lock per project: it holds
			// whether or not the project has a row here.
			if _, err := c.exec(`SELECT pg_advisory_xact_lock(hashtext('sluice.files:' || ?))`, f.ProjectID); err != nil {
				return err
			}
		}
		if replaces != "" {
			res, err := c.exec(`DELETE FROM files WHERE id = ? AND tenant_id = ? AND project_id = ?`, replaces, f.TenantID, f.ProjectID)
			if err != nil {
				return err
			}
			if err := affected(res, "file"); err != nil {
				return err
			}
		}
		var used int64
		if err := c.queryRow(`SELECT COALESCE(SUM(size), 0) FROM files WHERE tenant_id = ? AND project_id = ?`,
			f.TenantID, f.ProjectID).Scan(&used); err != nil {
			return c.wrap(err)
		}
		if used+f.Size > quota {
			return errs.E(errs.QuotaExceeded, "project %s: %d bytes of files plus %d exceed the quota of %d", f.ProjectID, used, f.Size, quota)
		}
		_, err := c.exec(`INSERT INTO files (`+fileCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			f.ID, f.TenantID, f.ProjectID, f.Folder, f.Name, f.Size, f.SHA256, f.CreatedBy, micros(f.CreatedAt))
		if errs.Is(err, errs.Conflict) {
			return errs.Field(errs.Conflict, "file", "a file named %q already exists in %s", f.Name, f.Folder)
		}
		return err
	})
}

// FileByID returns a file of a tenant's project by id.
func (s *Store) FileByID(ctx context.Context, tenantID, projectID, id string) (*files.File, error) {
	return one(s.r.QueryRowContext(ctx, s.d.rebind(`SELECT `+fileCols+` FROM files WHERE id = ? AND tenant_id = ? AND project_id = ?`),
		id, tenantID, projectID), scanFile, "file")
}

// FileByName returns a file of a tenant's project by folder and name.
func (s *Store) FileByName(ctx context.Context, tenantID, projectID, folder, name string) (*files.File, error) {
	return one(s.r.QueryRowContext(ctx, s.d.rebind(`SELECT `+fileCols+` FROM files WHERE tenant_id = ? AND project_id = ? AND folder = ? AND name = ?`),
		tenantID, projectID, folder, name), scanFile, "file")
}

// Files lists a tenant's project's files, of one folder unless folder is
// empty, oldest first.
func (s *Store) Files(ctx context.Context, tenantID, projectID, folder string) ([]*files.File, error) {
	q, args := `SELECT `+fileCols+` FROM files WHERE tenant_id = ? AND project_id = ?`, []any{tenantID, projectID}
	if folder != "" {
		q, args = q+` AND folder = ?`, append(args, folder)
	}
	rows, err := s.r.QueryContext(ctx, s.d.rebind(q+` ORDER BY id`), args...)
	if err != nil {
		return nil, dbError(err, "list files")
	}
	return collect(rows, func(r *sql.Rows) (*files.File, error) { return scanFile(r) })
}

// DeleteFile removes a file's record.
func (s *Store) DeleteFile(ctx context.Context, tenantID, projectID, id string) error {
	res, err := s.exec(ctx, `DELETE FROM files WHERE id = ? AND tenant_id = ? AND project_id = ?`, id, tenantID, projectID)
	if err != nil {
		return err
	}
	return affected(res, "file")
}

// FilesUsed is the bytes of a project's files.
func (s *Store) FilesUsed(ctx context.Context, tenantID, projectID string) (int64, error) {
	var used int64
	err := s.r.QueryRowContext(ctx, s.d.rebind(`SELECT COALESCE(SUM(size), 0) FROM files WHERE tenant_id = ? AND project_id = ?`),
		tenantID, projectID).Scan(&used)
	if err != nil {
		return 0, dbError(err, "files used")
	}
	return used, nil
}
