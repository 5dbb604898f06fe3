package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/llm"
)

// sluiceCLI runs client commands against a started app with one key.
type sluiceCLI struct {
	t        *testing.T
	url, key string
}

// run runs a command off a terminal (as the existing tests do) and wants
// exit code want; it returns stdout and stderr together.
func (c sluiceCLI) run(want int, args ...string) string {
	c.t.Helper()
	code, out, errOut := cli(c.t, c.url, c.key, args...)
	if code != want {
		c.t.Fatalf("sluice %s: exit %d, want %d: %s%s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out + errOut
}

// json runs a command with -o json and decodes its stdout.
func (c sluiceCLI) json(args ...string) map[string]any {
	c.t.Helper()
	code, out, errOut := cli(c.t, c.url, c.key, append(args, "-o", "json")...)
	if code != 0 {
		c.t.Fatalf("sluice %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		c.t.Fatalf("sluice %s -o json: not a JSON object: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v
}

// tty runs a command as on a terminal (stdout's terminal-ness injected),
// without -o.
func (c sluiceCLI) tty(args ...string) string {
	c.t.Helper()
	var out, errOut bytes.Buffer
	env := map[string]string{"SLUICE_SERVER": c.url, "SLUICE_API_KEY": c.key}
	if err := runCLI(args, &out, &errOut, func(k string) string { return env[k] }, true); err != nil {
		c.t.Fatalf("sluice %s (terminal): %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String()
}

// TestCLIHelpOnEveryCommand: -h and --help on every command and group
// print usage with examples and exit 0, with no server to ask; help COMMAND
// says the same; an unknown flag names itself and the command's flags.
func TestCLIHelpOnEveryCommand(t *testing.T) {
	noEnv := func(string) string { return "" }
	groups := map[string]bool{} // every group, nested ones too: "alerts", "alerts webhook"
	for _, c := range commands() {
		for i := 1; i < len(c.path); i++ {
			groups[strings.Join(c.path[:i], " ")] = true
		}
		for _, h := range []string{"-h", "--help"} {
			args := append(append([]string{}, c.path...), h)
			var out, errOut bytes.Buffer
			if code := realMain(args, &out, &errOut, noEnv); code != 0 || !strings.Contains(out.String(), "Examples") {
				t.Errorf("sluice %s: exit %d, want 0 and examples:\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
			}
		}
		if c.help == "" {
			for _, f := range c.flags {
				if !strings.Contains(c.helpText(), "--"+f.name) {
					t.Errorf("sluice %s -h does not show --%s", c.name(), f.name)
				}
			}
		}
	}
	for g := range groups {
		var out bytes.Buffer
		if code := realMain(append(strings.Fields(g), "-h"), &out, &out, noEnv); code != 0 || !strings.Contains(out.String(), "Examples") {
			t.Errorf("sluice %s -h: exit %d:\n%s", g, code, out.String())
		}
	}
	for _, args := range [][]string{{"-h"}, {"help"}, {"help", "grants", "create"}, {"users", "create", "--name", "-h"},
		{"serve", "-h"}, {"serve", "--help"}, {"run", "-h"}, {"run", "flow.json", "--help"}, {"worker", "-h"}, {"help", "serve"},
		{"help", "alerts", "webhook", "set"}} {
		var out bytes.Buffer
		if code := realMain(args, &out, &out, noEnv); code != 0 || !strings.Contains(out.String(), "Examples") {
			t.Errorf("sluice %s: exit %d:\n%s", strings.Join(args, " "), code, out.String())
		}
	}
	for _, g := range []string{"platform", "upstream-keys", "alerts", "alerts webhook", "credits", "credit-codes", "files"} {
		if !groups[g] {
			t.Errorf("no command group %q", g)
		}
	}
	if len(groups) < 12 {
		t.Fatalf("only %d command groups: %v", len(groups), groups)
	}

	var out, errOut bytes.Buffer
	if code := realMain([]string{"limits", "get", "global", "--frob", "x"}, &out, &errOut, noEnv); code != 2 ||
		!strings.Contains(errOut.String(), "--frob") || !strings.Contains(errOut.String(), "--tenant") {
		t.Fatalf("unknown flag: exit %d, %q; want 2 naming --frob and the flags of limits get", code, errOut.String())
	}
	errOut.Reset()
	if code := realMain([]string{"limits", "frob"}, &out, &errOut, noEnv); code != 2 || !strings.Contains(errOut.String(), "list, get, set, delete") {
		t.Fatalf("unknown verb: exit %d, %q; want 2 naming the verbs", code, errOut.String())
	}
	errOut.Reset()
	if code := realMain([]string{"alerts", "webhook"}, &out, &errOut, noEnv); code != 2 || !strings.Contains(errOut.String(), "get, set, delete") {
		t.Fatalf("a nested group without its verb: exit %d, %q; want 2 naming the verbs", code, errOut.String())
	}
	errOut.Reset()
	if code := realMain([]string{"worker", "--frob"}, &out, &errOut, noEnv); code != 2 || !strings.Contains(errOut.String(), "worker -h") {
		t.Fatalf("worker --frob: exit %d, %q; want 2 pointing at worker -h", code, errOut.String())
	}
}

// TestCLINamesResolve: --tenant, --project, --user and names in scopes and
// arguments are looked up through the list endpoints, a project's name
// within its tenant; a name two tenants use is refused naming both, an
// unknown one naming what there is. --flag=value and --flag value both work.
func TestCLINamesResolve(t *testing.T) {
	s := start(t, testConfig(t))
	c := sluiceCLI{t, s.url, keyPattern.FindString(s.stdout.String())}
	uni := c.json("tenants", "create", "--name", "university")["id"].(string)
	corp := c.json("tenants", "create", "--name=corp")["id"].(string)
	c.json("departments", "create", "--tenant", "university", "--name", "cs101")
	uniP := c.json("projects", "create", "--tenant", "university", "--department", "cs101", "--name", "group-1")
	corpP := c.json("projects", "create", "--tenant=corp", "--name", "group-1")
	if uniP["tenant_id"] != uni || uniP["department_id"] == "" || corpP["tenant_id"] != corp {
		t.Fatalf("created by names: %v %v", uniP, corpP)
	}
	alice := c.json("users", "create", "--tenant", "university", "--name", "alice")["id"].(string)
	c.run(0, "memberships", "add", "--tenant", "university", "--user", "alice", "--project", "group-1")
	if m := c.json("memberships", "list", "--tenant-id", uni, "--user", "alice"); len(m["items"].([]any)) != 1 ||
		m["items"].([]any)[0].(map[string]any)["project_id"] != uniP["id"] {
		t.Fatalf("membership by names: %v", m)
	}
	if got := c.json("projects", "get", "group-1", "--tenant", "corp"); got["id"] != corpP["id"] {
		t.Fatalf("projects get group-1 --tenant corp: got %v, want %s", got["id"], corpP["id"])
	}
	if got := c.json("users", "get", alice); got["name"] != "alice" {
		t.Fatalf("users get by id: %v", got)
	}

	// Ambiguous: the platform admin sees both tenants' group-1.
	out := c.run(1, "projects", "get", "group-1")
	for _, want := range []string{`"group-1"`, uniP["id"].(string), corpP["id"].(string), "university", "corp", "--tenant"} {
		if !strings.Contains(out, want) {
			t.Errorf("ambiguous project name: want %q in %s", want, out)
		}
	}
	out = c.run(1, "limits", "get", "project/group-1")
	if !strings.Contains(out, "ambiguous") && !strings.Contains(out, "2 projects") {
		t.Errorf("ambiguous name in a scope: %s", out)
	}
	// Unknown: named, with the candidates.
	out = c.run(1, "users", "get", "bob", "--tenant", "university")
	if !strings.Contains(out, "not_found") || !strings.Contains(out, `"bob"`) || !strings.Contains(out, "alice") {
		t.Errorf("unknown user: %s", out)
	}
	if out := c.run(1, "projects", "list", "--tenant", "nowhere"); !strings.Contains(out, `"nowhere"`) || !strings.Contains(out, "university") {
		t.Errorf("unknown tenant: %s", out)
	}

	// Scopes by name, within their tenant.
	c.run(0, "limits", "set", "project/group-1", "--tenant", "corp", "--limits", `{"requests":"7/min"}`)
	if got := c.json("limits", "get", "project/"+corpP["id"].(string)); got["limits"].(map[string]any)["requests"] != "7/min" {
		t.Fatalf("limits set by name reached %v", got)
	}
	if got := c.json("limits", "get", "project/"+uniP["id"].(string)); len(got["limits"].(map[string]any)) != 0 {
		t.Fatalf("the other tenant's group-1 got limits: %v", got)
	}
	c.run(0, "limits", "set", "membership/alice@group-1", "--tenant", "university", "--limits", `{"requests":"3/min"}`)
	if got := c.json("limits", "get", "membership/"+alice+"@"+uniP["id"].(string)); got["limits"].(map[string]any)["requests"] != "3/min" {
		t.Fatalf("membership scope by names: %v", got)
	}
}

// TestCLIOutput: -o json is the API's answer; on a terminal (injected) the
// answer is a table with headers and names in place of ids; off a
// terminal, JSON as before.
func TestCLIOutput(t *testing.T) {
	s := start(t, testConfig(t))
	c := sluiceCLI{t, s.url, keyPattern.FindString(s.stdout.String())}
	uni := c.json("tenants", "create", "--name", "university", "--timezone", "Asia/Shanghai")["id"].(string)
	prj := c.json("projects", "create", "--tenant", "university", "--name", "group-1")["id"].(string)
	c.run(0, "limits", "set", "project/group-1", "--tenant", "university", "--plan", "pro", "--limits", `{"tokens":"1000000/month"}`)

	for _, tc := range []struct {
		args []string
		path string
	}{
		{[]string{"tenants", "list"}, "/api/v1/admin/tenants"},
		{[]string{"projects", "get", "group-1", "--tenant", "university"}, "/api/v1/admin/projects/" + prj},
		{[]string{"limits", "get", "project/group-1", "--tenant", "university"}, "/api/v1/admin/limits/project/" + prj},
		{[]string{"plans", "get", "pro"}, "/api/v1/admin/plans/pro"},
		{[]string{"plans", "list"}, "/api/v1/admin/plans"},
		{[]string{"whoami"}, "/api/v1/me"},
	} {
		got := c.json(tc.args...)
		code, want := call(t, "GET", s.url+tc.path, c.key, "")
		if code != 200 || !reflect.DeepEqual(got, want) {
			t.Errorf("sluice %s -o json:\n got %v\nwant %v (%d)", strings.Join(tc.args, " "), got, want, code)
		}
	}

	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"tenants", "list"}, []string{"NAME", "TIME ZONE", "university", "Asia/Shanghai", uni}},
		{[]string{"projects", "list"}, []string{"NAME", "TENANT", "group-1", "university"}},
		{[]string{"limits", "list"}, []string{"SCOPE", "PLAN", "project/group-1", "pro", "tokens=1000000/month"}},
		{[]string{"plans", "list"}, []string{"NAME", "PRIORITY", "free", "enterprise"}},
		{[]string{"projects", "get", "group-1", "--tenant", "university"}, []string{"tenant_id", "university (" + uni + ")"}},
		{[]string{"usage", "--scope", "project/group-1", "--tenant", "university"}, []string{"SCOPE", "DIMENSION", "LIMIT", "project/group-1", "1000000 tokens"}},
	} {
		out := c.tty(tc.args...)
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("sluice %s on a terminal: want %q in\n%s", strings.Join(tc.args, " "), w, out)
			}
		}
		if strings.HasPrefix(strings.TrimSpace(out), "{") {
			t.Errorf("sluice %s on a terminal printed JSON:\n%s", strings.Join(tc.args, " "), out)
		}
	}
	// Off a terminal without -o: JSON, as scripts expect; -o table asks.
	if out := c.run(0, "tenants", "list"); !json.Valid([]byte(out)) {
		t.Errorf("tenants list off a terminal: not JSON: %s", out)
	}
	if out := c.run(0, "tenants", "list", "-o", "table"); !strings.HasPrefix(out, "NAME") {
		t.Errorf("tenants list -o table: %s", out)
	}
	if out := c.run(2, "tenants", "list", "-o", "xml"); !strings.Contains(out, "table, json") {
		t.Errorf("-o xml: %s", out)
	}
	// Errors are the API's message and field.
	out := c.run(1, "limits", "set", "project/group-1", "--tenant", "university", "--limits", `{"tokens":"lots"}`)
	if !strings.Contains(out, "invalid") || !strings.Contains(out, "field limits.tokens") || strings.Contains(out, "Go value") {
		t.Errorf("a bad limit: %s", out)
	}
}

// TestCLILimitsPlansGrants: limits set/get/delete, a plan set and changed
// field by field, a grant created for a while, listed and revoked.
func TestCLILimitsPlansGrants(t *testing.T) {
	s := start(t, testConfig(t))
	c := sluiceCLI{t, s.url, keyPattern.FindString(s.stdout.String())}
	c.json("tenants", "create", "--name", "university")
	alice := c.json("users", "create", "--tenant", "university", "--name", "alice")["id"].(string)

	c.run(0, "plans", "set", "lab", "--priority", "normal", "--description", "lab groups", "--limits", `{"requests":"60/min","tokens":"500000/day"}`)
	c.run(0, "plans", "set", "lab", "--description", "for lab groups")
	if p := c.json("plans", "get", "lab"); p["description"] != "for lab groups" || p["priority"] != "normal" ||
		p["limits"].(map[string]any)["tokens"] != "500000/day" {
		t.Fatalf("plans set kept the fields not given? %v", p)
	}

	c.run(0, "limits", "set", "user/alice", "--tenant", "university", "--plan", "lab", "--limits", `{"tokens":"1000/day"}`)
	got := c.json("limits", "get", "user/alice", "--tenant", "university")
	if got["plan"] != "lab" || got["scope"] != "user/"+alice || got["effective"].(map[string]any)["tokens"] != "1000/day" {
		t.Fatalf("limits get after set: %v", got)
	}
	if out := c.run(1, "plans", "delete", "lab"); !strings.Contains(out, "conflict") {
		t.Fatalf("deleting a plan in use: %s", out)
	}

	g := c.json("grants", "create", "--tenant", "university", "--scope", "user/alice", "--limits", `{"tokens":"500/day"}`,
		"--expires-in", "3d", "--reason", "exam week")
	exp, err := time.Parse(time.RFC3339, g["expires_at"].(string))
	if err != nil || g["scope"] != "user/"+alice || exp.Before(time.Now().Add(71*time.Hour)) || exp.After(time.Now().Add(73*time.Hour)) {
		t.Fatalf("grants create --expires-in 3d: %v (%v)", g, err)
	}
	if got := c.json("limits", "get", "user/alice", "--tenant", "university"); got["effective"].(map[string]any)["tokens"] != "1500/day" {
		t.Fatalf("effective with the grant: %v, want 1500/day", got["effective"])
	}
	l := c.json("grants", "list", "--scope", "user/alice", "--tenant", "university", "--active")
	if items := l["items"].([]any); len(items) != 1 || items[0].(map[string]any)["id"] != g["id"] {
		t.Fatalf("grants list --active: %v", l)
	}
	if out := c.tty("grants", "list", "--tenant", "university"); !strings.Contains(out, "user/alice") || !strings.Contains(out, "active") {
		t.Fatalf("grants list table: %s", out)
	}
	c.run(0, "grants", "delete", g["id"].(string))
	if l := c.json("grants", "list", "--tenant", "university", "--active=true"); len(l["items"].([]any)) != 0 {
		t.Fatalf("active grants after delete: %v", l)
	}
	c.run(2, "grants", "create", "--scope", "user/"+alice, "--limits", `{"tokens":"5/day"}`)
	c.run(2, "grants", "create", "--scope", "user/"+alice, "--limits", `{"tokens":"5/day"}`, "--expires-in", "soon")
	c.run(2, "grants", "create", "--scope", "user/"+alice, "--limits", `{not json`, "--expires-in", "1d")

	c.run(0, "limits", "delete", "user/alice", "--tenant", "university")
	if got := c.json("limits", "get", "user/"+alice); got["plan"] != nil || len(got["limits"].(map[string]any)) != 0 {
		t.Fatalf("limits after delete: %v", got)
	}
	c.run(0, "plans", "delete", "lab")
	if out := c.run(1, "plans", "get", "lab"); !strings.Contains(out, "not_found") {
		t.Fatalf("deleted plan: %s", out)
	}

	// A key's life: create, expire, revoke.
	k := c.json("keys", "create", "--tenant", "university", "--user", "alice", "--name", "laptop")
	c.json("keys", "expire", k["id"].(string), "--in", "24h")
	if got := c.json("keys", "get", k["id"].(string)); got["expires_at"] == nil {
		t.Fatalf("keys expire --in 24h: %v", got)
	}
	c.run(2, "keys", "expire", k["id"].(string))
	if got := c.json("keys", "revoke", k["id"].(string)); got["revoked_at"] == nil {
		t.Fatalf("keys revoke: %v", got)
	}
}

// TestCLIFlowsAndRuns: a member uploads a flow by name into her project,
// runs it (the answer's text; then streamed; then -o json), reads the run
// with its nodes, and cancels a run that waits on a slow model; the run
// ends cancelled.
func TestCLIFlowsAndRuns(t *testing.T) {
	cfg := testConfig(t)
	cfg.Models = []llm.ModelConfig{{Name: "fast", Provider: llm.ProviderSimulated, Default: true},
		{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(time.Hour)}}
	s := start(t, cfg)
	admin := sluiceCLI{t, s.url, keyPattern.FindString(s.stdout.String())}
	admin.json("tenants", "create", "--name", "university")
	admin.json("projects", "create", "--tenant", "university", "--name", "group-1")
	admin.json("users", "create", "--tenant", "university", "--name", "alice")
	admin.run(0, "memberships", "add", "--tenant", "university", "--user", "alice", "--project", "group-1")
	alice := sluiceCLI{t, s.url, admin.json("keys", "create", "--tenant", "university", "--user", "alice", "--project", "group-1")["secret"].(string)}

	flowFile, err := filepath.Abs("../../examples/flows/basic-prompting.json")
	if err != nil {
		t.Fatal(err)
	}
	f := alice.json("flows", "upload", flowFile, "--project", "group-1", "--endpoint-name", "basic")
	if f["endpoint_name"] != "basic" || f["id"] == "" {
		t.Fatalf("flows upload: %v", f)
	}
	if out := alice.tty("flows", "list"); !strings.Contains(out, "ENDPOINT") || !strings.Contains(out, "basic") || !strings.Contains(out, "group-1") {
		t.Fatalf("flows list table: %s", out)
	}

	var out, errOut bytes.Buffer
	env := map[string]string{"SLUICE_SERVER": s.url, "SLUICE_API_KEY": alice.key}
	if err := runCLI([]string{"flows", "run", "basic", "--input", "hello"}, &out, &errOut, func(k string) string { return env[k] }, true); err != nil {
		t.Fatalf("flows run: %v %s", err, errOut.String())
	}
	answer := strings.TrimSpace(out.String())
	if !strings.Contains(answer, "hello") || strings.HasPrefix(answer, "{") || !strings.Contains(errOut.String(), "run run_") {
		t.Fatalf("flows run on a terminal: %q / %q", answer, errOut.String())
	}
	streamed := alice.tty("flows", "run", "Basic Prompting", "--input", "hello", "--stream",
		"--tweaks", `{"LanguageModelComponent-LsJMR":{"stream":true}}`)
	if strings.TrimSpace(streamed) != answer {
		t.Fatalf("streamed answer %q, want %q", streamed, answer)
	}
	res := alice.json("flows", "run", "basic", "--input", "hello")
	runID, _ := res["run_id"].(string)
	if runID == "" || res["outputs"] == nil {
		t.Fatalf("flows run -o json: %v", res)
	}
	if rec := alice.json("runs", "show", runID); rec["status"] != "succeeded" || len(rec["trace"].([]any)) == 0 {
		t.Fatalf("runs show: %v", rec)
	}
	if out := alice.tty("runs", "show", runID); !strings.Contains(out, "NODES:") || !strings.Contains(out, "LanguageModelComponent") ||
		!strings.Contains(out, "group-1") {
		t.Fatalf("runs show table: %s", out)
	}
	if l := alice.json("runs", "list", "--flow", "basic"); len(l["items"].([]any)) != 3 {
		t.Fatalf("runs list --flow basic: %d runs, want 3", len(l["items"].([]any)))
	}

	// A run waiting on the slow model, cancelled from the CLI.
	done := make(chan string, 1)
	go func() {
		code, out, errOut := cli(t, s.url, alice.key, "flows", "run", "basic", "--input", "slowly",
			"--tweaks", `{"LanguageModelComponent-LsJMR":{"model_name":"slow"}}`)
		done <- fmt.Sprintf("%d|%s|%s", code, out, errOut)
	}()
	running := ""
	eventually(t, patience, "the slow run is running", func() bool {
		for _, r := range alice.json("runs", "list")["items"].([]any) {
			if m := r.(map[string]any); m["status"] == "running" {
				running = m["id"].(string)
				return true
			}
		}
		return false
	})
	if got := alice.json("runs", "cancel", running); got["status"] != "cancelling" {
		t.Fatalf("runs cancel: %v", got)
	}
	select {
	case got := <-done:
		if !strings.HasPrefix(got, "1|") || !strings.Contains(got, "cancel") {
			t.Fatalf("the cancelled run's flows run: %s", got)
		}
	case <-time.After(patience):
		t.Fatal("flows run still waits after its run was cancelled")
	}
	if rec := alice.json("runs", "show", running); rec["status"] != "cancelled" {
		t.Fatalf("after cancel: %v", rec["status"])
	}
	alice.run(1, "runs", "cancel", running)
	if out := alice.run(2, "flows", "upload", filepath.Join(t.TempDir(), "missing.json")); !strings.Contains(out, "missing.json") {
		t.Fatalf("upload of a missing file: %s", out)
	}
}
