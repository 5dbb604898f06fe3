package run_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
)

// TestFileNodeReadsProjectFiles: a File node reads the run's project's
// files named by a tweak (several, joined by its separator; as a DataFrame
// one row per file), never another project's, and without file storage it
// fails naming the node.
func TestFileNodeReadsProjectFiles(t *testing.T) {
	const fileFlow = `{"nodes":[
		{"id":"file","type":"File","data":{"separator":"\n---\n"}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"file","sourceHandle":"%s","target":"out"}]}`
	h := newHarness(t)
	ctx := context.Background()
	fs := &files.Service{Store: h.store, Dir: t.TempDir()}
	h.exec.Files = fs
	sc := files.Scope{TenantID: h.who.TenantID, ProjectID: h.who.ProjectID}
	a, err := fs.Put(ctx, sc, "flw_x", "a.txt", files.Numbered, "u", strings.NewReader("alpha"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := fs.Put(ctx, sc, sc.ProjectID, "b.json", files.Numbered, "u", strings.NewReader(`{ "k": 1 }`))
	if err != nil {
		t.Fatal(err)
	}
	other, err := fs.Put(ctx, files.Scope{TenantID: h.who.TenantID, ProjectID: "prj_other"}, "flw_x", "c.txt", files.Numbered, "u", strings.NewReader("no"))
	if err != nil {
		t.Fatal(err)
	}
	both := map[string]map[string]any{"file": {"path": []any{a.Path(), b.ID}}}

	got, err := runFlow(t, h, strings.Replace(fileFlow, "%s", "message", 1), "", both)
	if err != nil || got != "alpha\n---\n{\"k\":1}" {
		t.Errorf("message: got %q, %v; want the two texts joined by the separator", got, err)
	}
	got, err = runFlow(t, h, strings.Replace(fileFlow, "%s", "dataframe", 1), "", both)
	if err != nil || !strings.HasPrefix(got, "| file_path") || !strings.Contains(got, "| "+a.Path()) || !strings.Contains(got, "alpha") {
		t.Errorf("dataframe: got %q, %v; want a table of file_path and text", got, err)
	}
	for _, p := range []string{other.Path(), other.ID, "/etc/hosts", "flw_x/../../x"} {
		_, err := runFlow(t, h, strings.Replace(fileFlow, "%s", "message", 1), "", map[string]map[string]any{"file": {"path": p}})
		var e *errs.Error
		if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.file.path" {
			t.Errorf("path %q: got %v, want unprocessable at nodes.file.path", p, err)
		}
	}
	// Together the files may hold no more than one file's limit.
	fs.MaxFileBytes = 12
	_, err = runFlow(t, h, strings.Replace(fileFlow, "%s", "message", 1), "", both)
	if e := (*errs.Error)(nil); !errors.As(err, &e) || e.Code != errs.TooLarge || e.Field != "nodes.file.path" {
		t.Errorf("files past max_file_bytes together: got %v, want too_large at nodes.file.path", err)
	}
	h.exec.Files = nil
	_, err = runFlow(t, h, strings.Replace(fileFlow, "%s", "message", 1), "", both)
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.Unprocessable || !strings.Contains(e.Message, "node file (File)") {
		t.Errorf("without storage: got %v, want unprocessable naming the node", err)
	}
}
