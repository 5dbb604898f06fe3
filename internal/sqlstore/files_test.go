package sqlstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
)

// testFiles: file records are found only with their tenant and project; a
// name is unique in its folder; the quota check and the insert are one
// decision, so uploads racing for a project's last bytes never together
// pass it; a replacement refused keeps the file it would replace.
func testFiles(t *testing.T, s *Store) {
	ctx := context.Background()
	mk := func(id, tenant, project, folder, name string, size int64) *files.File {
		return &files.File{ID: id, TenantID: tenant, ProjectID: project, Folder: folder, Name: name, Size: size,
			SHA256: "00", CreatedBy: "usr_1", CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	}
	if err := s.InsertFile(ctx, mk("fil_1", "ten_a", "prj_a", "flw_1", "a.txt", 10), 100, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertFile(ctx, mk("fil_2", "ten_a", "prj_a", "flw_1", "a.txt", 10), 100, ""); !errs.Is(err, errs.Conflict) {
		t.Errorf("same name in the folder: got %v, want conflict", err)
	}
	if f, err := s.FileByName(ctx, "ten_a", "prj_a", "flw_1", "a.txt"); err != nil || f.ID != "fil_1" || f.Size != 10 {
		t.Errorf("FileByName = %+v, %v", f, err)
	}
	for _, sc := range [][2]string{{"ten_b", "prj_a"}, {"ten_a", "prj_b"}} {
		if _, err := s.FileByID(ctx, sc[0], sc[1], "fil_1"); !errs.Is(err, errs.NotFound) {
			t.Errorf("FileByID from %v: got %v, want not_found", sc, err)
		}
		if err := s.DeleteFile(ctx, sc[0], sc[1], "fil_1"); !errs.Is(err, errs.NotFound) {
			t.Errorf("DeleteFile from %v: got %v, want not_found", sc, err)
		}
	}
	if err := s.InsertFile(ctx, mk("fil_3", "ten_a", "prj_a", "flw_1", "b.txt", 91), 100, ""); !errs.Is(err, errs.QuotaExceeded) {
		t.Errorf("past the quota: got %v, want quota_exceeded", err)
	}
	if err := s.InsertFile(ctx, mk("fil_4", "ten_a", "prj_a", "flw_1", "a.txt", 95), 100, "fil_1"); err != nil {
		t.Errorf("replacing a.txt: %v", err)
	}
	if err := s.InsertFile(ctx, mk("fil_5", "ten_a", "prj_a", "flw_1", "a.txt", 101), 100, "fil_4"); !errs.Is(err, errs.QuotaExceeded) {
		t.Errorf("a replacement past the quota: got %v, want quota_exceeded", err)
	}
	if f, err := s.FileByName(ctx, "ten_a", "prj_a", "flw_1", "a.txt"); err != nil || f.ID != "fil_4" {
		t.Errorf("after a refused replacement FileByName = %+v, %v, want fil_4 kept", f, err)
	}

	// Ten uploads of 30 bytes race for a project with a 100-byte quota:
	// three fit.
	var wg sync.WaitGroup
	var mu sync.Mutex
	stored := 0
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.InsertFile(ctx, mk(fmt.Sprintf("fil_r%d", i), "ten_a", "prj_race", "prj_race", fmt.Sprintf("r%d", i), 30), 100, "")
			if err == nil {
				mu.Lock()
				stored++
				mu.Unlock()
			} else if !errs.Is(err, errs.QuotaExceeded) {
				t.Errorf("racing upload %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	used, err := s.FilesUsed(ctx, "ten_a", "prj_race")
	if err != nil || stored != 3 || used != 90 {
		t.Errorf("racing uploads: %d stored, %d bytes used (%v), want 3 and 90", stored, used, err)
	}
	list, err := s.Files(ctx, "ten_a", "prj_race", "")
	if err != nil || len(list) != 3 {
		t.Errorf("Files = %d, %v, want 3", len(list), err)
	}
}
