// Package files owns the files a project keeps: uploads through LangFlow's
// file API and what SaveToFile components write. A file belongs to one
// tenant and one project; every lookup names both, so no caller reaches
// another's file. Its metadata (name, size, sha256, owner) is in the store,
// its bytes on disk under the storage directory, named by the file's id
// only, written whole (temporary file, fsync, rename) before its record
// exists.
package files

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/policy"
)

// Defaults for the limits (config files.max_file_bytes, files.project_quota).
const (
	DefaultMaxFileBytes = 32 << 20
	DefaultProjectQuota = 512 << 20
)

// MaxNameBytes bounds a file's name.
const MaxNameBytes = 255

// File is one stored file.
type File struct {
	ID        string `json:"id"`
	TenantID  string `json:"tenant_id"`
	ProjectID string `json:"project_id"`
	// Folder groups a project's files as LangFlow's storage does: a flow's
	// id for files uploaded to a flow (v1), the project's id for the
	// project's own files (v2, SaveToFile).
	Folder    string    `json:"folder"`
	Name      string    `json:"name"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
}

// Path is the file's path as LangFlow names it: "<folder>/<name>".
func (f *File) Path() string { return f.Folder + "/" + f.Name }

// Scope is the tenant and project a caller was found to work in: every
// operation of the service is confined to one.
type Scope struct {
	TenantID  string
	ProjectID string
}

// Store keeps file metadata.
type Store interface {
	// InsertFile records f unless the project's files would then exceed
	// quota bytes (errs.QuotaExceeded) or its folder has a file of that
	// name (errs.Conflict). replaces, when not "", is the id of a file of
	// the project that f replaces: its record goes in the same
	// transaction, so a refused replacement keeps it.
	InsertFile(ctx context.Context, f *File, quota int64, replaces string) error
	// FileByID, FileByName and Files find files of one tenant and project.
	FileByID(ctx context.Context, tenantID, projectID, id string) (*File, error)
	FileByName(ctx context.Context, tenantID, projectID, folder, name string) (*File, error)
	Files(ctx context.Context, tenantID, projectID, folder string) ([]*File, error)
	// DeleteFile removes a file's record.
	DeleteFile(ctx context.Context, tenantID, projectID, id string) error
	// FilesUsed is the bytes a project's files take.
	FilesUsed(ctx context.Context, tenantID, projectID string) (int64, error)
}

// Service stores and reads files.
type Service struct {
	Store Store
	// Dir is where file bytes live: Dir/<tenant>/<project>/<file id>.
	Dir string
	// MaxFileBytes bounds one file; ProjectQuota all of a project's.
	MaxFileBytes int64
	ProjectQuota int64
	Log          *slog.Logger
	// Now is the clock (nil: time.Now); LangFlow's v1 names carry the time.
	Now func() time.Time
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Service) maxFile() int64 {
	if s.MaxFileBytes > 0 {
		return s.MaxFileBytes
	}
	return DefaultMaxFileBytes
}

func (s *Service) quota() int64 {
	if s.ProjectQuota > 0 {
		return s.ProjectQuota
	}
	return DefaultProjectQuota
}

// MaxFile is the largest file the service stores.
func (s *Service) MaxFile() int64 { return s.maxFile() }

// CleanName checks an uploaded file's name: its last path element, no
// control characters, not "." or "..", at most MaxNameBytes.
func CleanName(name string) (string, error) {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.TrimSpace(name)
	switch {
	case name == "" || name == "." || name == "..":
		return "", errs.Field(errs.Invalid, "file", "the file has no usable name")
	case len(name) > MaxNameBytes:
		return "", errs.Field(errs.Invalid, "file", "the file's name is longer than %d bytes", MaxNameBytes)
	case !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl):
		return "", errs.Field(errs.Invalid, "file", "the file's name has control characters or is not UTF-8")
	}
	return name, nil
}

// Naming picks the stored name of a new file: LangFlow's v1 prefixes the
// upload time; v2 keeps the name and numbers repeats ("a (1).txt").
type Naming int

const (
	// Timestamped is v1's "<YYYY-MM-DD_HH-MM-SS>_<name>".
	Timestamped Naming = iota
	// Numbered is v2's: the name, then "root (1).ext", "root (2).ext"….
	Numbered
	// Replace overwrites a file of the same name (SaveToFile).
	Replace
)

// Put stores the bytes read from r as a file named name in folder of the
// scope's project. More than MaxFileBytes is errs.TooLarge; a project over
// its quota errs.QuotaExceeded. Nothing is recorded unless the whole file
// is on disk.
func (s *Service) Put(ctx context.Context, sc Scope, folder, name string, naming Naming, createdBy string, r io.Reader) (*File, error) {
	if sc.TenantID == "" || sc.ProjectID == "" || folder == "" {
		return nil, errs.E(errs.Invalid, "a file needs a tenant, a project and a folder")
	}
	name, err := CleanName(name)
	if err != nil {
		return nil, err
	}
	dir, err := s.projectDir(sc)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, errs.Wrap(err, "create file directory")
	}
	now := s.now().UTC()
	f := &File{ID: id.NewAt("fil", now), TenantID: sc.TenantID, ProjectID: sc.ProjectID, Folder: folder,
		CreatedBy: createdBy, CreatedAt: now.Truncate(time.Microsecond)}
	final := filepath.Join(dir, f.ID)
	if f.Size, f.SHA256, err = s.writeAtomic(dir, final, r); err != nil {
		return nil, err
	}
	// From here the bytes are on disk under the file's id: every failure
	// below removes them, so only recorded files stay.
	var old *File
	replaces := ""
	if naming == Replace {
		old, err = s.Store.FileByName(ctx, sc.TenantID, sc.ProjectID, folder, name)
		if err != nil && !errs.Is(err, errs.NotFound) {
			_ = os.Remove(final)
			return nil, err
		}
		if old != nil {
			replaces = old.ID
		}
	}
	for i := 0; ; i++ {
		f.Name = candidate(name, naming, now, i)
		err = s.Store.InsertFile(ctx, f, s.quota(), replaces)
		if !errs.Is(err, errs.Conflict) || naming == Replace || i >= 99 {
			break
		}
	}
	if err != nil {
		_ = os.Remove(final)
		if errs.Is(err, errs.QuotaExceeded) {
			used, _ := s.Store.FilesUsed(ctx, sc.TenantID, sc.ProjectID)
			return nil, &errs.Error{Code: errs.QuotaExceeded, Field: "file",
				Message: fmt.Sprintf("project %s has %s of files; %s more would pass its quota of %s",
					sc.ProjectID, policy.Bytes(used), policy.Bytes(f.Size), policy.Bytes(s.quota()))}
		}
		return nil, err
	}
	if old != nil {
		if err := os.Remove(filepath.Join(dir, old.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.logWarn("removing a replaced file's bytes failed", old, err)
		}
	}
	return f, nil
}

func (s *Service) logWarn(msg string, f *File, err error) {
	if s.Log != nil {
		s.Log.Warn(msg, slog.String("tenant", f.TenantID), slog.String("project", f.ProjectID),
			slog.String("file", f.ID), slog.String("error", err.Error()))
	}
}

// candidate is the i-th name tried for a new file.
func candidate(name string, naming Naming, now time.Time, i int) string {
	if naming == Timestamped {
		name = now.Format("2006-01-02_15-04-05") + "_" + name
	}
	if i == 0 {
		return name
	}
	root, ext := name, ""
	if j := strings.LastIndexByte(name, '.'); j > 0 {
		root, ext = name[:j], name[j:]
	}
	return fmt.Sprintf("%s (%d)%s", root, i, ext)
}

// writeAtomic copies r, at most MaxFileBytes, into a temporary file in dir,
// syncs it and renames it to final, then syncs dir: a process killed at any
// point leaves either no file or the whole file (and a stray temporary
// file, which no record names).
func (s *Service) writeAtomic(dir, final string, r io.Reader) (int64, string, error) {
	tmp, err := os.CreateTemp(dir, ".upload-*")
	if err != nil {
		return 0, "", errs.Wrap(err, "create temporary file")
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	limit := s.maxFile()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, limit+1))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return 0, "", errs.Field(errs.TooLarge, "file", "the file is larger than %s", policy.Bytes(limit))
		}
		if e := (*errs.Error)(nil); errors.As(err, &e) {
			return 0, "", err
		}
		return 0, "", errs.Field(errs.Invalid, "file", "reading the file: %v", err)
	}
	if n > limit {
		return 0, "", errs.Field(errs.TooLarge, "file", "the file is larger than %s", policy.Bytes(limit))
	}
	if err := tmp.Sync(); err != nil {
		return 0, "", errs.Wrap(err, "sync file")
	}
	if err := tmp.Close(); err != nil {
		return 0, "", errs.Wrap(err, "close file")
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return 0, "", errs.Wrap(err, "rename file")
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			os.Remove(final)
			return 0, "", errs.Wrap(err, "sync file directory")
		}
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// projectDir is the directory of a project's file bytes. Tenant and
// project ids are Sluice's own, but they are checked anyway: no id makes a
// path leave Dir.
func (s *Service) projectDir(sc Scope) (string, error) {
	for _, v := range []string{sc.TenantID, sc.ProjectID} {
		if v == "" || v == "." || v == ".." || strings.ContainsAny(v, `/\`) {
			return "", errs.E(errs.Internal, "unusable tenant or project id %q", v)
		}
	}
	if s.Dir == "" {
		return "", errs.E(errs.Unavailable, "file storage is not configured")
	}
	return filepath.Join(s.Dir, sc.TenantID, sc.ProjectID), nil
}

// Get returns a file of the scope by id.
func (s *Service) Get(ctx context.Context, sc Scope, fileID string) (*File, error) {
	return s.Store.FileByID(ctx, sc.TenantID, sc.ProjectID, fileID)
}

// Find returns a file of the scope by its folder and name.
func (s *Service) Find(ctx context.Context, sc Scope, folder, name string) (*File, error) {
	return s.Store.FileByName(ctx, sc.TenantID, sc.ProjectID, folder, name)
}

// List lists the files of a folder of the scope ("" lists every folder).
func (s *Service) List(ctx context.Context, sc Scope, folder string) ([]*File, error) {
	return s.Store.Files(ctx, sc.TenantID, sc.ProjectID, folder)
}

// Open opens a file's bytes.
func (s *Service) Open(f *File) (*os.File, error) {
	dir, err := s.projectDir(Scope{TenantID: f.TenantID, ProjectID: f.ProjectID})
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(filepath.Join(dir, f.ID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errs.E(errs.NotFound, "file %s has no content on this server (is the storage directory shared by every instance?)", f.Name)
	}
	if err != nil {
		return nil, errs.Wrap(err, "open file")
	}
	return fh, nil
}

// Read returns a file's bytes, at most MaxFileBytes.
func (s *Service) Read(f *File) ([]byte, error) {
	fh, err := s.Open(f)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, s.maxFile()+1))
	if err != nil {
		return nil, errs.Wrap(err, "read file")
	}
	if int64(len(b)) > s.maxFile() {
		return nil, errs.E(errs.TooLarge, "file %s is larger than %s", f.Name, policy.Bytes(s.maxFile()))
	}
	return b, nil
}

// Delete removes a file of the scope: its record, then its bytes.
func (s *Service) Delete(ctx context.Context, sc Scope, fileID string) (*File, error) {
	f, err := s.Store.FileByID(ctx, sc.TenantID, sc.ProjectID, fileID)
	if err != nil {
		return nil, err
	}
	if err := s.Store.DeleteFile(ctx, sc.TenantID, sc.ProjectID, f.ID); err != nil {
		return nil, err
	}
	dir, err := s.projectDir(sc)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(filepath.Join(dir, f.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.logWarn("removing a deleted file's bytes failed", f, err)
	}
	return f, nil
}

// Sweep removes what writes cut short left under Dir: temporary files, and
// files whose record was never written (a process killed between the
// rename and the insert), when older than grace, so that an upload under
// way on another instance sharing Dir is left alone. It returns how many
// it removed.
func (s *Service) Sweep(ctx context.Context, grace time.Duration) (int, error) {
	if s.Dir == "" {
		return 0, nil
	}
	cutoff := s.now().Add(-grace)
	removed := 0
	tenants, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, errs.Wrap(err, "sweep files")
	}
	for _, t := range tenants {
		projects, err := os.ReadDir(filepath.Join(s.Dir, t.Name()))
		if err != nil || !t.IsDir() {
			continue
		}
		for _, p := range projects {
			dir := filepath.Join(s.Dir, t.Name(), p.Name())
			ents, err := os.ReadDir(dir)
			if err != nil || !p.IsDir() {
				continue
			}
			for _, e := range ents {
				info, err := e.Info()
				if err != nil || info.IsDir() || info.ModTime().After(cutoff) {
					continue
				}
				stray := strings.HasPrefix(e.Name(), ".upload-")
				if !stray {
					_, err := s.Store.FileByID(ctx, t.Name(), p.Name(), e.Name())
					if err != nil && !errs.Is(err, errs.NotFound) {
						return removed, err
					}
					stray = err != nil
				}
				if stray && os.Remove(filepath.Join(dir, e.Name())) == nil {
					removed++
				}
			}
		}
	}
	return removed, nil
}
