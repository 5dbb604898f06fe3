package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
)

// member is a tenant admin with a key in one project of their tenant.
type member struct {
	tenantID, projectID, key string
}

// newMember creates a tenant, a project in it and a tenant admin with a key
// in that project.
func newMember(t *testing.T, url, admin, tenant string) member {
	t.Helper()
	code, tnt := call(t, "POST", url+"/api/v1/admin/tenants", admin, `{"name":"`+tenant+`"}`)
	if code != 201 {
		t.Fatalf("tenant %s: %d %v", tenant, code, tnt)
	}
	_, prj := call(t, "POST", url+"/api/v1/admin/projects", admin, `{"name":"web","tenant_id":"`+tnt["id"].(string)+`"}`)
	_, usr := call(t, "POST", url+"/api/v1/admin/users", admin, `{"name":"boss","role":"tenant_admin","tenant_id":"`+tnt["id"].(string)+`"}`)
	_, key := call(t, "POST", url+"/api/v1/admin/keys", admin, `{"user_id":"`+usr["id"].(string)+`","project_id":"`+prj["id"].(string)+`"}`)
	return member{tenantID: tnt["id"].(string), projectID: prj["id"].(string), key: key["secret"].(string)}
}

// upload posts content as the multipart field "file" named name.
func upload(t *testing.T, url, key, name string, content []byte) (int, map[string]any) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("file", name)
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(content)
	mw.Close()
	req, _ := http.NewRequest("POST", url, &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("x-api-key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	data, _ := io.ReadAll(resp.Body)
	json.Unmarshal(data, &m)
	return resp.StatusCode, m
}

// fetch GETs url with key and returns the status and the body.
func fetch(t *testing.T, url, key string) (int, []byte, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("x-api-key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

func createFlow(t *testing.T, url, key, endpoint string, data []byte) string {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/api/v1/flows?endpoint_name="+endpoint, bytes.NewReader(data))
	req.Header.Set("x-api-key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	if resp.StatusCode != 201 {
		t.Fatalf("create flow %s: %d %v", endpoint, resp.StatusCode, m)
	}
	return m["id"].(string)
}

func errorCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func filesConfig(t *testing.T) config.Config {
	cfg := testConfig(t)
	cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
	cfg.Files.MaxFileBytes = 64 << 10
	cfg.Files.ProjectQuota = 256 << 10
	return cfg
}

// TestFileAPIAndDocumentQA: a file uploaded to a flow is listed,
// downloaded whole, read by the flow's File node (LangFlow's Document Q&A
// starter, a tweak naming the upload) so that the model's prompt carries
// its text, and deleted; another tenant's caller gets 404 for it, and an
// upload past files.max_file_bytes is 413.
func TestFileAPIAndDocumentQA(t *testing.T) {
	cfg := filesConfig(t)
	s := start(t, cfg)
	admin := string(cfg.AdminKey)
	a := newMember(t, s.url, admin, "acme")
	b := newMember(t, s.url, admin, "globex")

	qa, err := os.ReadFile("../../examples/flows/document-qa.json")
	if err != nil {
		t.Fatal(err)
	}
	flowID := createFlow(t, s.url, a.key, "doc-qa", qa)

	doc := "The launch code is PINEAPPLE-42. " + strings.Repeat("Filler sentence about the mission. ", 200)
	code, up := upload(t, s.url+"/api/v1/files/upload/"+flowID, a.key, "mission.txt", []byte(doc))
	if code != 201 || up["flowId"] != flowID {
		t.Fatalf("upload: %d %v, want 201 with flowId %s", code, up, flowID)
	}
	filePath, _ := up["file_path"].(string)
	folder, name, _ := strings.Cut(filePath, "/")
	if folder != flowID || !strings.HasSuffix(name, "_mission.txt") {
		t.Fatalf("file_path %q, want %s/<timestamp>_mission.txt", filePath, flowID)
	}

	code, list := call(t, "GET", s.url+"/api/v1/files/list/"+flowID, a.key, "")
	if names, _ := list["files"].([]any); code != 200 || len(names) != 1 || names[0] != name {
		t.Errorf("list: %d %v, want [%s]", code, list, name)
	}
	code, got, h := fetch(t, s.url+"/api/v1/files/download/"+filePath, a.key)
	if code != 200 || string(got) != doc || !strings.Contains(h.Get("Content-Disposition"), "attachment") {
		t.Errorf("download: %d, %d bytes, %q; want 200 with the file as an attachment", code, len(got), h.Get("Content-Disposition"))
	}

	// Another tenant sees none of it: the flow, so its files, is not theirs.
	for _, u := range []string{"/api/v1/files/list/" + flowID, "/api/v1/files/download/" + filePath} {
		if code, _, _ := fetch(t, s.url+u, b.key); code != 404 {
			t.Errorf("globex GET %s: %d, want 404", u, code)
		}
	}
	if code, m := call(t, "DELETE", s.url+"/api/v1/files/delete/"+filePath, b.key, ""); code != 404 {
		t.Errorf("globex delete: %d %v, want 404", code, m)
	}
	if code, m := upload(t, s.url+"/api/v1/files/upload/"+flowID, b.key, "x.txt", []byte("x")); code != 404 {
		t.Errorf("globex upload to acme's flow: %d %v, want 404", code, m)
	}

	// Too large: 413, nothing stored.
	code, m := upload(t, s.url+"/api/v1/files/upload/"+flowID, a.key, "big.txt", bytes.Repeat([]byte("x"), 64<<10+1))
	if code != 413 || errorCode(m) != "too_large" || m["detail"] == nil {
		t.Errorf("oversize upload: %d %v, want 413 too_large with LangFlow's detail", code, m)
	}

	// The run: the File node reads the upload; the prompt it fills is
	// what the model is sent as its system message.
	fileNode := "File-b2gOG"
	run := func(path string) (int, map[string]any) {
		body, _ := json.Marshal(map[string]any{"input_value": "What is the launch code?",
			"tweaks": map[string]any{fileNode: map[string]any{"path": path}}})
		return call(t, "POST", s.url+"/api/v1/run/doc-qa", a.key, string(body))
	}
	code, res := run(filePath)
	if code != 200 {
		t.Fatalf("run: %d %v", code, res)
	}
	_, rec := call(t, "GET", s.url+"/api/v1/runs/"+res["run_id"].(string), a.key, "")
	var promptPreview string
	var modelInput float64
	for _, tr := range rec["trace"].([]any) {
		n := tr.(map[string]any)
		switch n["type"] {
		case "Prompt":
			promptPreview, _ = n["output_preview"].(string)
		case "LanguageModelComponent":
			modelInput = n["usage"].(map[string]any)["input_tokens"].(float64)
		}
	}
	if !strings.Contains(promptPreview, "The launch code is PINEAPPLE-42.") {
		t.Errorf("the prompt's output %q does not carry the file's text", promptPreview)
	}
	// 200 filler sentences are over 1,000 tokens: the model got them.
	if modelInput < 1000 {
		t.Errorf("the model's input was %v tokens, want the file's text (over 1000)", modelInput)
	}

	// Paths off the project's storage are refused, naming the node.
	for _, p := range []string{"/etc/passwd", "../../etc/passwd", flowID + "/nope.txt"} {
		code, m := run(p)
		e, _ := m["error"].(map[string]any)
		if code != 422 || e["field"] != "nodes."+fileNode+".path" {
			t.Errorf("run with path %q: %d %v, want 422 naming nodes.%s.path", p, code, m, fileNode)
		}
	}
	// globex cannot name acme's file from a flow of its own.
	createFlow(t, s.url, b.key, "doc-qa", qa)
	body, _ := json.Marshal(map[string]any{"input_value": "q", "tweaks": map[string]any{fileNode: map[string]any{"path": filePath}}})
	if code, m := call(t, "POST", s.url+"/api/v1/run/doc-qa", b.key, string(body)); code != 422 {
		t.Errorf("globex run naming acme's file: %d %v, want 422", code, m)
	}

	// A PDF is refused with a message pointing to the LangFlow front.
	code, up = upload(t, s.url+"/api/v1/files/upload/"+flowID, a.key, "report.pdf", []byte("%PDF-1.4"))
	if code != 201 {
		t.Fatalf("pdf upload: %d %v", code, up)
	}
	code, res = run(up["file_path"].(string))
	if msg := fmt.Sprint(res["error"]); code != 422 || !strings.Contains(msg, "LangFlow front") {
		t.Errorf("run on a pdf: %d %v, want 422 naming the LangFlow front", code, res)
	}

	code, del := call(t, "DELETE", s.url+"/api/v1/files/delete/"+filePath, a.key, "")
	if code != 200 || del["message"] != "File "+name+" deleted successfully" {
		t.Errorf("delete: %d %v", code, del)
	}
	if code, _, _ := fetch(t, s.url+"/api/v1/files/download/"+filePath, a.key); code != 404 {
		t.Errorf("download after delete: %d, want 404", code)
	}
}

// TestFileAPIv2AndSaveToFile: v2 uploads are the project's files (listed,
// downloaded by id, numbered on a repeated name, 404 to another tenant);
// a SaveToFile flow writes its output there, counted against the quota,
// and the file it wrote downloads.
func TestFileAPIv2AndSaveToFile(t *testing.T) {
	cfg := filesConfig(t)
	s := start(t, cfg)
	admin := string(cfg.AdminKey)
	a := newMember(t, s.url, admin, "acme")
	b := newMember(t, s.url, admin, "globex")

	code, up := upload(t, s.url+"/api/v2/files", a.key, "notes.md", []byte("# Notes\n"))
	if code != 201 || up["name"] != "notes" || up["path"] != a.projectID+"/notes.md" || up["size"] != float64(8) {
		t.Fatalf("v2 upload: %d %v, want 201 notes at %s/notes.md, 8 bytes", code, up, a.projectID)
	}
	if _, ok := up["provider"]; !ok {
		t.Errorf("v2 upload answer %v has no provider", up)
	}
	id := up["id"].(string)
	if code, again := upload(t, s.url+"/api/v2/files", a.key, "notes.md", []byte("# More\n")); code != 201 || again["path"] != a.projectID+"/notes (1).md" {
		t.Errorf("second notes.md: %d %v, want path notes (1).md", code, again)
	}
	code, got, _ := fetch(t, s.url+"/api/v2/files/"+id, a.key)
	if code != 200 || string(got) != "# Notes\n" {
		t.Errorf("v2 download: %d %q", code, got)
	}
	if code, _, _ := fetch(t, s.url+"/api/v2/files/"+id, b.key); code != 404 {
		t.Errorf("globex v2 download of acme's file: %d, want 404", code)
	}
	if code, m := call(t, "DELETE", s.url+"/api/v2/files/"+id, b.key, ""); code != 404 {
		t.Errorf("globex v2 delete: %d %v, want 404", code, m)
	}
	code, listed, _ := fetch(t, s.url+"/api/v2/files", b.key)
	if code != 200 || strings.TrimSpace(string(listed)) != "[]" {
		t.Errorf("globex v2 list: %d %s, want []", code, listed)
	}
	if code, m := upload(t, s.url+"/api/v2/files", a.key, "big.bin", bytes.Repeat([]byte("x"), 64<<10+1)); code != 413 {
		t.Errorf("v2 oversize upload: %d %v, want 413", code, m)
	}
	// Not a form with a file: 400 naming the field.
	if code, m := call(t, "POST", s.url+"/api/v2/files", a.key, `{"file":"x"}`); code != 400 || m["error"].(map[string]any)["field"] != "file" {
		t.Errorf("v2 upload without a form: %d %v, want 400 on field file", code, m)
	}
	// A body announced larger than the limit is refused before it is read.
	req, _ := http.NewRequest("POST", s.url+"/api/v2/files", bytes.NewReader(make([]byte, 200<<10)))
	req.Header.Set("x-api-key", a.key)
	req.Header.Set("Content-Type", "multipart/form-data; boundary=x")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 413 {
		t.Errorf("v2 upload announced at 200KiB: %v %v, want 413", resp, err)
	} else {
		resp.Body.Close()
	}

	flow := `{"nodes":[{"id":"in","type":"ChatInput","data":{}},
		{"id":"save","type":"SaveToFile","data":{"file_name":"answer","local_format":"markdown","storage_location":[{"name":"Local"}]}},
		{"id":"out","type":"ChatOutput","data":{}}],
		"edges":[{"source":"in","target":"save","targetHandle":"input"},{"source":"save","target":"out"}]}`
	createFlow(t, s.url, a.key, "saver", []byte(flow))
	code, res := call(t, "POST", s.url+"/api/v1/run/saver", a.key, `{"input_value":"Remember the milk"}`)
	if code != 200 {
		t.Fatalf("run: %d %v", code, res)
	}
	want := "Message saved successfully as 'answer.markdown' at " + a.projectID + "/answer.markdown"
	if !strings.Contains(fmt.Sprint(res["outputs"]), want) {
		t.Errorf("run answer %v, want it to say %q", res["outputs"], want)
	}
	var files []map[string]any
	_, listed, _ = fetch(t, s.url+"/api/v2/files", a.key)
	json.Unmarshal(listed, &files)
	var saved string
	for _, f := range files {
		if f["path"] == a.projectID+"/answer.markdown" {
			saved = f["id"].(string)
		}
	}
	if saved == "" {
		t.Fatalf("v2 list %s has no answer.markdown", listed)
	}
	code, got, _ = fetch(t, s.url+"/api/v2/files/"+saved, a.key)
	if code != 200 || string(got) != "**Message:**\n\nRemember the milk" {
		t.Errorf("download of the saved file: %d %q", code, got)
	}
	// Saved again, the file is replaced, not duplicated.
	call(t, "POST", s.url+"/api/v1/run/saver", a.key, `{"input_value":"Remember the eggs"}`)
	_, listed, _ = fetch(t, s.url+"/api/v2/files", a.key)
	if n := strings.Count(string(listed), "answer.markdown"); n != 1 {
		t.Errorf("after a second save the list names answer.markdown %d times, want 1: %s", n, listed)
	}

	code, m := call(t, "DELETE", s.url+"/api/v2/files/"+id, a.key, "")
	if code != 200 || m["detail"] != "File notes deleted successfully" {
		t.Errorf("v2 delete: %d %v", code, m)
	}
}

// TestSaveToFileCountsAgainstQuota: a SaveToFile whose output would pass
// the project's quota fails the run with quota_exceeded naming the node.
func TestSaveToFileCountsAgainstQuota(t *testing.T) {
	cfg := filesConfig(t)
	cfg.Files.MaxFileBytes, cfg.Files.ProjectQuota = 4<<10, 4<<10
	s := start(t, cfg)
	a := newMember(t, s.url, string(cfg.AdminKey), "acme")
	if code, m := upload(t, s.url+"/api/v2/files", a.key, "filler.txt", bytes.Repeat([]byte("x"), 4000)); code != 201 {
		t.Fatalf("filler: %d %v", code, m)
	}
	flow := `{"nodes":[{"id":"in","type":"ChatInput","data":{}},
		{"id":"save","type":"SaveToFile","data":{"file_name":"out","local_format":"txt"}},
		{"id":"out","type":"ChatOutput","data":{}}],
		"edges":[{"source":"in","target":"save","targetHandle":"input"},{"source":"save","target":"out"}]}`
	createFlow(t, s.url, a.key, "saver", []byte(flow))
	code, res := call(t, "POST", s.url+"/api/v1/run/saver", a.key, `{"input_value":"`+strings.Repeat("y", 200)+`"}`)
	e, _ := res["error"].(map[string]any)
	if code != 429 || e["code"] != "quota_exceeded" || e["field"] != "nodes.save.input" {
		t.Errorf("run past the file quota: %d %v, want 429 quota_exceeded on nodes.save.input", code, res)
	}
}

// TestFilesInSandboxedRuns: a run held to memory_per_run executes in a
// worker process, which reads and writes the project's files through the
// server: File reads an upload, SaveToFile's output is then the project's
// file, and the run record says it ran in the worker.
func TestFilesInSandboxedRuns(t *testing.T) {
	s, key := sandboxApp(t, func(c *config.Config) {
		c.Sandbox.CgroupRoot = "/nonexistent/sluice"
		c.Sandbox.Unenforced = config.UnenforcedRun
	})
	code, up := upload(t, s.url+"/api/v2/files", key, "facts.md", []byte("Sandboxed facts."))
	if code != 201 {
		t.Fatalf("upload: %d %v", code, up)
	}
	flow := `{"nodes":[{"id":"in","type":"ChatInput","data":{}},
		{"id":"file","type":"File","data":{}},
		{"id":"save","type":"SaveToFile","data":{"file_name":"copy","local_format":"txt"}},
		{"id":"out","type":"ChatOutput","data":{}}],
		"edges":[{"source":"file","sourceHandle":"message","target":"save","targetHandle":"input"},{"source":"save","target":"out"}]}`
	createFlow(t, s.url, key, "boxed-files", []byte(flow))
	body, _ := json.Marshal(map[string]any{"input_value": "go", "tweaks": map[string]any{"file": map[string]any{"path": up["path"]}}})
	code, res := call(t, "POST", s.url+"/api/v1/run/boxed-files", key, string(body))
	if code != 200 {
		t.Fatalf("run: %d %v", code, res)
	}
	_, rec := call(t, "GET", s.url+"/api/v1/runs/"+res["run_id"].(string), key, "")
	if peak, _ := rec["peak_memory_bytes"].(float64); peak <= 0 {
		t.Errorf("run record %v: no worker's peak memory, so it did not run in the sandbox", rec)
	}
	var listed []map[string]any
	_, raw, _ := fetch(t, s.url+"/api/v2/files", key)
	json.Unmarshal(raw, &listed)
	var copyID string
	for _, f := range listed {
		if p, _ := f["path"].(string); strings.HasSuffix(p, "/copy.txt") {
			copyID = f["id"].(string)
		}
	}
	if copyID == "" {
		t.Fatalf("the sandboxed SaveToFile wrote no copy.txt: %s", raw)
	}
	if code, got, _ := fetch(t, s.url+"/api/v2/files/"+copyID, key); code != 200 || string(got) != "Sandboxed facts." {
		t.Errorf("copy.txt: %d %q, want the uploaded file's text", code, got)
	}
}
