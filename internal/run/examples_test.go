package run_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/run"
)

// examplesDir holds the flows the README's tour uses, so that it works
// from a clone alone.
const examplesDir = "../../examples/flows"

// exampleFlows returns the examples' paths relative to examplesDir.
func exampleFlows(t *testing.T) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(examplesDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".json") {
			rel, _ := filepath.Rel(examplesDir, path)
			paths = append(paths, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil || len(paths) < 10 {
		t.Fatalf("examples in %s: got %d (%v), want LangFlow's 9 and Sluice's own", examplesDir, len(paths), err)
	}
	return paths
}

// TestExampleFlows: every example parses and validates, and runs end to
// end on the simulated model, except document-qa, whose File node needs an
// uploaded file and says so. LangFlow's starter flows are kept unchanged
// (the shared copies are the reference).
func TestExampleFlows(t *testing.T) {
	for _, path := range exampleFlows(t) {
		t.Run(path, func(t *testing.T) {
			data := readFile(t, filepath.Join(examplesDir, path))
			f := parseFlow(t, data)
			if shared, err := os.ReadFile(filepath.Join(sharedFlowDir, path)); err == nil && !bytes.Equal(shared, data) {
				t.Errorf("%s differs from LangFlow's export in %s: keep the examples unchanged", path, sharedFlowDir)
			}
			h := newHarness(t)
			res, err := h.exec.Execute(context.Background(), h.job(f, "What is 2 + 2?"))
			if path == "document-qa.json" {
				var e *errs.Error
				var re *run.RunError
				if !errors.As(err, &e) || e.Code != errs.Unprocessable || !errors.As(err, &re) || !strings.HasPrefix(re.NodeID, "File-") {
					t.Fatalf("run: got %v, want unprocessable at the File node (no file uploaded)", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if len(res.Outputs) == 0 || res.Outputs[0].Text == "" {
				t.Fatalf("run: got outputs %+v, want an answer", res.Outputs)
			}
			usesModel := slices.ContainsFunc(f.Nodes, func(n *flow.Node) bool { return n.Component().IsModel || n.Type == flow.TypeAgent })
			if usesModel != res.Simulated || usesModel != (res.Usage.InputTokens > 0) {
				t.Errorf("run: simulated %t with usage %+v; want the simulated model's answer exactly when the flow has a model", res.Simulated, res.Usage)
			}
			for _, tr := range res.Trace {
				if tr.Status != "succeeded" {
					t.Errorf("node %s: got status %q, want succeeded", tr.NodeID, tr.Status)
				}
			}
		})
	}
}

// TestReleaseNotesDigest runs Sluice's own example, a LangFlow-format
// export of SplitText, Parser and CurrentDate feeding a prompt, and checks
// the prompt the model was given.
func TestReleaseNotesDigest(t *testing.T) {
	h := newHarness(t)
	exec := *h.exec
	exec.Now = func() time.Time { return time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC) }
	f := parseFlow(t, readFile(t, examplesDir+"/release-notes-digest.json"))
	notes := "v1.4: gateway routes by weight.\nv1.4: keys get their own limits.\nv1.5: Parser, SplitText and CurrentDate run natively in flows exported from LangFlow."
	res, err := exec.Execute(context.Background(), h.job(f, notes))
	if err != nil {
		t.Fatal(err)
	}
	previews := map[string]string{}
	for _, tr := range res.Trace {
		previews[tr.NodeID] = tr.OutputPreview
	}
	// chunk_size 120 on line breaks: the first two lines fit one chunk.
	want := "Today: Current date and time in UTC: 2026-03-02 09:30:00 UTC\n\n" +
		"Release notes, one chunk a line:\n" +
		"- v1.4: gateway routes by weight.\nv1.4: keys get their own limits.\n" +
		"- v1.5: Parser, SplitText and CurrentDate run natively in flows exported from LangFlow.\n\n" +
		"Write a three-line summary of these notes for the team, newest first."
	if got := previews["Prompt-digest"]; got != want {
		t.Errorf("prompt:\ngot  %q\nwant %q", got, want)
	}
	if len(res.Outputs) != 1 || res.Outputs[0].NodeID != "ChatOutput-digest" || res.Usage.InputTokens == 0 {
		t.Errorf("run: got outputs %+v usage %+v, want the model's answer at ChatOutput-digest", res.Outputs, res.Usage)
	}
}
