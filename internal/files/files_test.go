package files_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/sqlstore"
)

func newService(t *testing.T, maxFile, quota int64) (*files.Service, string) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "sluice.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dir := t.TempDir()
	clock := time.Date(2026, 3, 1, 14, 5, 9, 0, time.UTC)
	return &files.Service{Store: st, Dir: dir, MaxFileBytes: maxFile, ProjectQuota: quota, Now: func() time.Time { return clock }}, dir
}

var (
	scA  = files.Scope{TenantID: "ten_a", ProjectID: "prj_a"}
	scA2 = files.Scope{TenantID: "ten_a", ProjectID: "prj_a2"}
	scB  = files.Scope{TenantID: "ten_b", ProjectID: "prj_a"} // same project id, other tenant
)

// onDisk lists the names in a project's directory.
func onDisk(t *testing.T, dir string, sc files.Scope) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, sc.TenantID, sc.ProjectID))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestPutStoresWholeFileByID(t *testing.T) {
	s, dir := newService(t, 1<<20, 4<<20)
	ctx := context.Background()
	body := []byte("hello, file\n")
	f, err := s.Put(ctx, scA, "flw_1", "notes.txt", files.Timestamped, "usr_1", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	if f.Size != int64(len(body)) || f.SHA256 != hex.EncodeToString(sum[:]) || f.CreatedBy != "usr_1" {
		t.Errorf("got %+v, want size %d, sha256 of the body, created_by usr_1", f, len(body))
	}
	if want := "flw_1/2026-03-01_14-05-09_notes.txt"; f.Path() != want {
		t.Errorf("got path %q, want %q", f.Path(), want)
	}
	// The bytes are under the file's id only: no temporary file is left.
	if got := onDisk(t, dir, scA); len(got) != 1 || got[0] != f.ID {
		t.Errorf("got files on disk %v, want only %s", got, f.ID)
	}
	got, err := s.Read(f)
	if err != nil || !bytes.Equal(got, body) {
		t.Errorf("Read = %q, %v, want %q", got, err, body)
	}
	again, err := s.Find(ctx, scA, "flw_1", "2026-03-01_14-05-09_notes.txt")
	if err != nil || again.ID != f.ID {
		t.Errorf("Find = %+v, %v, want file %s", again, err, f.ID)
	}
	// The same name in the same second gets a numbered name, not an error.
	g, err := s.Put(ctx, scA, "flw_1", "notes.txt", files.Timestamped, "usr_1", strings.NewReader("x"))
	if err != nil || g.Name != "2026-03-01_14-05-09_notes (1).txt" {
		t.Errorf("second upload = %+v, %v, want the name numbered (1)", g, err)
	}
}

// failingReader yields some bytes, then fails: a client that went away,
// as a process killed mid-write would leave a partial file.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	k := min(len(p), r.n)
	r.n -= k
	return k, nil
}

func TestPutLeavesNothingBehindWhenItFails(t *testing.T) {
	s, dir := newService(t, 1024, 4096)
	ctx := context.Background()
	tests := []struct {
		name string
		r    io.Reader
		code errs.Code
	}{
		{"body broken off", &failingReader{n: 100}, errs.Invalid},
		{"larger than max_file_bytes", strings.NewReader(strings.Repeat("x", 1025)), errs.TooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Put(ctx, scA, "prj_a", "a.txt", files.Numbered, "usr_1", tt.r)
			if !errs.Is(err, tt.code) {
				t.Fatalf("got error %v, want code %s", err, tt.code)
			}
			if got := onDisk(t, dir, scA); len(got) != 0 {
				t.Errorf("got files on disk %v, want none", got)
			}
			if fs, _ := s.List(ctx, scA, ""); len(fs) != 0 {
				t.Errorf("got records %+v, want none", fs)
			}
		})
	}
	// Exactly the limit is stored.
	if _, err := s.Put(ctx, scA, "prj_a", "a.txt", files.Numbered, "usr_1", strings.NewReader(strings.Repeat("x", 1024))); err != nil {
		t.Errorf("a file of exactly max_file_bytes: %v, want stored", err)
	}
}

func TestPutRefusesPastProjectQuota(t *testing.T) {
	s, dir := newService(t, 1024, 2048)
	ctx := context.Background()
	kb := strings.Repeat("x", 1024)
	for i := range 2 {
		if _, err := s.Put(ctx, scA, "prj_a", "f.txt", files.Numbered, "usr_1", strings.NewReader(kb)); err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
	}
	_, err := s.Put(ctx, scA, "prj_a", "f.txt", files.Numbered, "usr_1", strings.NewReader("1"))
	if !errs.Is(err, errs.QuotaExceeded) {
		t.Fatalf("third file: got %v, want quota_exceeded", err)
	}
	if got := onDisk(t, dir, scA); len(got) != 2 {
		t.Errorf("got %d files on disk after the refusal, want 2", len(got))
	}
	// Another project of the tenant has its own quota.
	if _, err := s.Put(ctx, scA2, "prj_a2", "f.txt", files.Numbered, "usr_1", strings.NewReader(kb)); err != nil {
		t.Errorf("another project: %v, want stored", err)
	}
	// Replacing a file frees its bytes first: rewriting it at full size fits.
	if _, err := s.Put(ctx, scA, "prj_a", "f.txt", files.Replace, "usr_1", strings.NewReader(kb)); err != nil {
		t.Errorf("replacing a file in a full project: %v, want stored", err)
	}
	// Deleting frees quota and bytes.
	fs, _ := s.List(ctx, scA, "prj_a")
	if _, err := s.Delete(ctx, scA, fs[0].ID); err != nil {
		t.Fatal(err)
	}
	if got := onDisk(t, dir, scA); len(got) != 1 {
		t.Errorf("got %d files on disk after a delete, want 1", len(got))
	}
	if _, err := s.Put(ctx, scA, "prj_a", "g.txt", files.Numbered, "usr_1", strings.NewReader(kb)); err != nil {
		t.Errorf("after a delete: %v, want stored", err)
	}
}

func TestLookupsAreScoped(t *testing.T) {
	s, _ := newService(t, 1024, 4096)
	ctx := context.Background()
	f, err := s.Put(ctx, scA, "flw_1", "secret.txt", files.Numbered, "usr_1", strings.NewReader("tenant a's"))
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range []files.Scope{scA2, scB} {
		if _, err := s.Get(ctx, sc, f.ID); !errs.Is(err, errs.NotFound) {
			t.Errorf("Get from %+v: got %v, want not_found", sc, err)
		}
		if _, err := s.Find(ctx, sc, "flw_1", "secret.txt"); !errs.Is(err, errs.NotFound) {
			t.Errorf("Find from %+v: got %v, want not_found", sc, err)
		}
		if fs, err := s.List(ctx, sc, ""); err != nil || len(fs) != 0 {
			t.Errorf("List from %+v: got %d files, %v, want none", sc, len(fs), err)
		}
		if _, err := s.Delete(ctx, sc, f.ID); !errs.Is(err, errs.NotFound) {
			t.Errorf("Delete from %+v: got %v, want not_found", sc, err)
		}
	}
	if _, err := s.Get(ctx, scA, f.ID); err != nil {
		t.Errorf("Get from its own scope: %v", err)
	}
}

func TestCleanName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"report.txt", "report.txt"},
		{"../../etc/passwd", "passwd"},
		{`C:\Users\me\notes.md`, "notes.md"},
		{"..", ""},
		{"a/", ""},
		{"bad\x00name", ""},
		{strings.Repeat("n", 256), ""},
	}
	for _, tt := range tests {
		got, err := files.CleanName(tt.in)
		if tt.want == "" {
			if !errs.Is(err, errs.Invalid) {
				t.Errorf("CleanName(%q) = %q, %v, want invalid", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("CleanName(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestRefusedReplacementKeepsTheOldFile(t *testing.T) {
	s, dir := newService(t, 1024, 2048)
	ctx := context.Background()
	put := func(name string, n int, naming files.Naming) (*files.File, error) {
		return s.Put(ctx, scA, "prj_a", name, naming, "usr_1", strings.NewReader(strings.Repeat("x", n)))
	}
	old, err := put("a.txt", 100, files.Numbered)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		n    int
	}{{"b.txt", 1024}, {"c.txt", 900}} {
		if _, err := put(f.name, f.n, files.Numbered); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := put("a.txt", 200, files.Replace); !errs.Is(err, errs.QuotaExceeded) {
		t.Fatalf("replacement past the quota: got %v, want quota_exceeded", err)
	}
	got, err := s.Find(ctx, scA, "prj_a", "a.txt")
	if err != nil || got.ID != old.ID || got.Size != 100 {
		t.Fatalf("after the refusal Find = %+v, %v, want the old file", got, err)
	}
	if b, err := s.Read(got); err != nil || len(b) != 100 {
		t.Errorf("the old file's bytes: %d, %v, want 100", len(b), err)
	}
	if n := len(onDisk(t, dir, scA)); n != 3 {
		t.Errorf("got %d files on disk, want 3", n)
	}
	// A replacement that fits takes the name; the old bytes go.
	nf, err := put("a.txt", 50, files.Replace)
	if err != nil || nf.Name != "a.txt" {
		t.Fatalf("replacement = %+v, %v", nf, err)
	}
	if _, err := os.Stat(filepath.Join(dir, scA.TenantID, scA.ProjectID, old.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the replaced file's bytes: stat %v, want gone", err)
	}
}

// TestSweepRemovesWhatACrashLeft: a temporary file and bytes without a
// record (a process killed mid-upload, or between rename and insert) are
// removed once older than the grace period; recorded files stay.
func TestSweepRemovesWhatACrashLeft(t *testing.T) {
	s, dir := newService(t, 1024, 4096)
	ctx := context.Background()
	kept, err := s.Put(ctx, scA, "prj_a", "kept.txt", files.Numbered, "usr_1", strings.NewReader("kept"))
	if err != nil {
		t.Fatal(err)
	}
	pdir := filepath.Join(dir, scA.TenantID, scA.ProjectID)
	for _, n := range []string{".upload-123", "fil_unrecorded"} {
		if err := os.WriteFile(filepath.Join(pdir, n), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.Now = time.Now
	// Within the grace period nothing goes: it may be an upload under way.
	if n, err := s.Sweep(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("Sweep within the grace period = %d, %v, want 0", n, err)
	}
	old := time.Now().Add(-2 * time.Hour)
	for _, n := range []string{".upload-123", "fil_unrecorded", kept.ID} {
		if err := os.Chtimes(filepath.Join(pdir, n), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Sweep(ctx, time.Hour); err != nil || n != 2 {
		t.Fatalf("Sweep = %d, %v, want 2 removed", n, err)
	}
	if got := onDisk(t, dir, scA); len(got) != 1 || got[0] != kept.ID {
		t.Errorf("after the sweep on disk: %v, want only %s", got, kept.ID)
	}
}
