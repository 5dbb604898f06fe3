package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// LangFlow's JavaScript client (@datastax/langflow-client, pinned in
// tests/langflow-client, installed there by scripts/test with npm ci)
// against Sluice's own LangFlow API and against the LangFlow front: it
// runs a flow by id and by endpoint name, streams, uploads a file and
// reads errors, exactly as it would against LangFlow.

// jsClient runs tests/langflow-client/run.mjs with env and returns what
// the client saw, by step.
func jsClient(t *testing.T, env ...string) map[string]map[string]any {
	t.Helper()
	dir, err := filepath.Abs("../../tests/langflow-client")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@datastax", "langflow-client")); err != nil {
		t.Fatalf("LangFlow's JS client is not installed: run scripts/test (it runs npm ci in %s): %v", dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "run.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node run.mjs: %v\n%s\n%s", err, out, stderr.String())
	}
	var got map[string]map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node run.mjs printed %q: %v", out, err)
	}
	t.Logf("the JS client saw: %s", out)
	return got
}

func strList(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// checkJSErrors: a missing flow reads as LangFlow's 404 with its detail, a
// bad key as 401 or 403.
func checkJSErrors(t *testing.T, got map[string]map[string]any) {
	t.Helper()
	if m := got["missing"]; m["status"] != 404.0 || m["body"] == nil || m["body"].(map[string]any)["detail"] == "" {
		t.Errorf("a missing flow: %v, want a LangflowError with status 404 and LangFlow's detail", m)
	}
	if b := got["badKey"]; b["status"] != 401.0 && b["status"] != 403.0 {
		t.Errorf("a bad key: %v, want a LangflowError with status 401 or 403", b)
	}
}

func TestLangflowJSClientNative(t *testing.T) {
	cfg := testConfig(t)
	cfg.AdminKey = gwAdmin
	s := start(t, cfg)
	a := applyPolicy(t, s.url, gwAdmin, frontKeysPolicy)
	data, err := os.ReadFile("../../examples/flows/basic-prompting.json")
	if err != nil {
		t.Fatal(err)
	}
	code, f := call(t, "POST", s.url+"/api/v1/flows?endpoint_name=js-basic", a.key, string(data))
	if code != 201 {
		t.Fatalf("upload: %d %v", code, f)
	}
	id := f["id"].(string)
	got := jsClient(t, "LF_URL="+s.url, "LF_KEY="+a.key, "LF_FLOW="+id, "LF_ENDPOINT=js-basic", "LF_MISSING=flw_nosuchflow")
	if r := got["byId"]; r["text"] == nil || r["text"] == "" || r["sessionId"] != id {
		t.Errorf("run by id: %v, want the answer's text, the session the flow's id", r)
	}
	if r := got["byEndpoint"]; r["text"] == nil || r["text"] == "" || r["sessionId"] != "js-session" {
		t.Errorf("run by endpoint name: %v, want the answer's text in session js-session", r)
	}
	st := got["stream"]
	if st["events"] == nil {
		t.Fatalf("stream: %v", st)
	}
	if ev := strList(st["events"]); len(ev) < 3 || ev[0] != "add_message" || ev[len(ev)-1] != "end" || st["endText"] == "" {
		t.Errorf("stream: %v, want add_message … end with the answer", st)
	}
	// The upload lands in the project's file storage, answered as LangFlow
	// answers, so the client reads it.
	if u := got["upload"]; u["flowId"] != id || !strings.HasPrefix(fmt.Sprint(u["filePath"]), id+"/") || !strings.HasSuffix(fmt.Sprint(u["filePath"]), "_notes.txt") {
		t.Errorf("upload: %v, want flowId %s and a filePath %s/<time>_notes.txt", u, id, id)
	}
	checkJSErrors(t, got)
}

func TestLangflowJSClientFront(t *testing.T) {
	lf := newLangflow(t)
	s, a := startFront(t, lf, frontPolicy, true)
	got := jsClient(t, "LF_URL="+s.url, "LF_KEY="+a.key, "LF_FLOW=f1", "LF_MISSING=missing")
	if r := got["byId"]; r["text"] != "Hello!" || r["sessionId"] != "s1" {
		t.Errorf("run through the front: %v, want LangFlow's answer", r)
	}
	if ev := strList(got["stream"]["events"]); !slices.Equal(ev, []string{"add_message", "token", "end"}) {
		t.Errorf("stream through the front: %v, want LangFlow's events", ev)
	}
	if u := got["upload"]; u["flowId"] != "f1" || !strings.HasPrefix(u["filePath"].(string), "f1/") {
		t.Errorf("upload through the front: %v, want LangFlow's answer", u)
	}
	checkJSErrors(t, got)
	// LangFlow saw the key Sluice holds, never the caller's.
	lf.mu.Lock()
	defer lf.mu.Unlock()
	for _, k := range lf.keys {
		if k != "lf-upstream-key" {
			t.Errorf("LangFlow received key %q", k)
		}
	}
}
