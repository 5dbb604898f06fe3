package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// cliWorld is a started app with a tenant university, its project
// group-1 and a member alice working there with a key.
type cliWorld struct {
	s            *started
	admin, alice sluiceCLI
	uni, prj     string // ids
	aliceID      string
	dataDir      string
}

func startCLIWorld(t *testing.T, modify func(*config.Config)) cliWorld {
	t.Helper()
	t.Setenv("SLUICE_SECRET_KEY", "a-server-secret-of-at-least-32-bytes!!")
	cfg := testConfig(t)
	if modify != nil {
		modify(&cfg)
	}
	s := start(t, cfg)
	admin := sluiceCLI{t, s.url, keyPattern.FindString(s.stdout.String())}
	w := cliWorld{s: s, admin: admin, dataDir: cfg.DataDir}
	w.uni = admin.json("tenants", "create", "--name", "university")["id"].(string)
	w.prj = admin.json("projects", "create", "--tenant", "university", "--name", "group-1")["id"].(string)
	w.aliceID = admin.json("users", "create", "--tenant", "university", "--name", "alice")["id"].(string)
	admin.run(0, "memberships", "add", "--tenant", "university", "--user", "alice", "--project", "group-1")
	w.alice = sluiceCLI{t, s.url, admin.json("keys", "create", "--tenant", "university", "--user", "alice", "--project", "group-1")["secret"].(string)}
	return w
}

// withStdin makes r the client's standard input for the rest of the test.
func withStdin(t *testing.T, r io.Reader) {
	t.Helper()
	old := clientStdin
	clientStdin = r
	t.Cleanup(func() { clientStdin = old })
}

// secretFile writes a secret to a file of its own.
func secretFile(t *testing.T, secret string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(f, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// wantIn fails unless every want is in out, and none of the unwanted.
func wantIn(t *testing.T, what, out string, want []string, unwanted ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: want %q in\n%s", what, w, out)
		}
	}
	for _, u := range unwanted {
		if strings.Contains(out, u) {
			t.Errorf("%s: %q must not be in\n%s", what, u, out)
		}
	}
}

// TestCLIPlatformUpstreamKeysQuarantine: platform set changes only the
// settings given and names the flag at fault; upstream keys are set from
// a file and from stdin and shown by hint only, never the key; the usage
// quarantine is the platform admins'.
func TestCLIPlatformUpstreamKeysQuarantine(t *testing.T) {
	w := startCLIWorld(t, nil)
	admin, alice := w.admin, w.alice

	if p := admin.json("platform", "get"); p["read_only"] != false {
		t.Fatalf("platform get: %v", p)
	}
	admin.run(0, "platform", "set", "--read-only", "--message", "upgrading until 14:00 UTC")
	p := admin.json("platform", "set", "--reserved-share", "0.2")
	if p["read_only"] != true || p["message"] != "upgrading until 14:00 UTC" || p["reserved_share"] != 0.2 {
		t.Fatalf("platform set --reserved-share kept the rest? %v", p)
	}
	code, api := call(t, "GET", w.s.url+"/api/v1/admin/platform", admin.key, "")
	if code != 200 || !reflect.DeepEqual(api, p) {
		t.Fatalf("platform as the API has it: %d %v, want %v", code, api, p)
	}
	wantIn(t, "platform get (terminal)", admin.tty("platform", "get"), []string{"read_only", "true", "upgrading until 14:00 UTC", "0.2"})
	// While read-only, new work is refused with the message.
	code, body := call(t, "POST", w.s.url+"/api/v1/quota/acquire", alice.key, `{"tokens":10}`)
	if code != 503 || !strings.Contains(errBody(body)["message"].(string), "upgrading") {
		t.Fatalf("acquire while read-only: %d %v, want 503 with the message", code, body)
	}
	if p := admin.json("platform", "set", "--read-only=false", "--message", ""); p["read_only"] != false || p["message"] != nil || p["reserved_share"] != 0.2 {
		t.Fatalf("platform set --read-only=false --message '': %v", p)
	}
	wantIn(t, "platform set --reserved-share lots", admin.run(2, "platform", "set", "--reserved-share", "lots"), []string{"--reserved-share", `"lots"`})
	wantIn(t, "platform set --reserved-share 5", admin.run(1, "platform", "set", "--reserved-share", "5"), []string{"invalid", "flag --reserved-share"})
	wantIn(t, "platform set (nothing)", admin.run(2, "platform", "set"), []string{"--read-only", "--message", "--reserved-share"})
	wantIn(t, "platform set --read-only maybe", admin.run(2, "platform", "set", "--read-only=maybe"), []string{"--read-only"})
	wantIn(t, "a member's platform set", alice.run(1, "platform", "set", "--read-only"), []string{"forbidden"})
	if p := admin.json("platform", "get"); p["read_only"] != false {
		t.Fatalf("a refused set changed the platform: %v", p)
	}

	// Upstream keys: from a file, from stdin; hints only.
	const userKey, projectKey = "lf-user-key-AAAA1234", "lf-project-key-BBBB5678"
	out := admin.run(0, "upstream-keys", "set", "user/alice", "--tenant", "university", "--secret-file", secretFile(t, userKey))
	wantIn(t, "upstream-keys set --secret-file", out, []string{"…1234", "user/" + w.aliceID}, userKey)
	withStdin(t, strings.NewReader(projectKey+"\n"))
	out = admin.run(0, "upstream-keys", "set", "project/group-1", "--tenant", "university")
	wantIn(t, "upstream-keys set < stdin", out, []string{"…5678", "project/" + w.prj}, projectKey)
	l := admin.json("upstream-keys", "list", "--tenant", "university")
	if items := l["data"].([]any); len(items) != 2 {
		t.Fatalf("upstream-keys list: %v, want 2 keys", l)
	}
	out = admin.tty("upstream-keys", "list")
	wantIn(t, "upstream-keys list (terminal)", out, []string{"SCOPE", "HINT", "user/alice", "project/group-1", "…1234", "…5678", "university"}, userKey, projectKey)
	// Alice sees her own; she may set her own.
	withStdin(t, strings.NewReader("lf-alice-own-CCCC9999"))
	alice.run(0, "upstream-keys", "set", "user/alice")
	if l := alice.json("upstream-keys", "list"); len(l["data"].([]any)) != 1 || !strings.Contains(alice.tty("upstream-keys", "list"), "…9999") {
		t.Fatalf("alice's upstream keys: %v", l)
	}
	// A terminal is refused before anything is read: /dev/null is a
	// character device, as a terminal is, which is what the check sees.
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	withStdin(t, devNull)
	wantIn(t, "upstream-keys set < a terminal", admin.run(2, "upstream-keys", "set", "user/alice", "--tenant", "university"),
		[]string{"terminal", "--secret-file"})
	withStdin(t, strings.NewReader(""))
	wantIn(t, "upstream-keys set < empty", admin.run(2, "upstream-keys", "set", "user/alice", "--tenant", "university"), []string{"--secret-file"})
	wantIn(t, "upstream-keys set, a key with a space", admin.run(1, "upstream-keys", "set", "user/alice", "--tenant", "university",
		"--secret-file", secretFile(t, "two words")), []string{"invalid", "flag --secret-file"}, "two words")
	wantIn(t, "upstream-keys set, missing file", admin.run(2, "upstream-keys", "set", "user/alice", "--secret-file", filepath.Join(t.TempDir(), "nope")),
		[]string{"--secret-file", "nope"})
	wantIn(t, "upstream-keys set user/bob", admin.run(1, "upstream-keys", "set", "user/bob", "--tenant", "university", "--secret-file", secretFile(t, "x1234")),
		[]string{"not_found", `"bob"`, "alice"})
	wantIn(t, "upstream-keys set tenant/…", admin.run(1, "upstream-keys", "set", "tenant/university", "--secret-file", secretFile(t, "x1234")),
		[]string{"invalid", "user/"})
	admin.run(0, "upstream-keys", "delete", "user/alice", "--tenant", "university")
	if l := admin.json("upstream-keys", "list", "--tenant", "university"); len(l["data"].([]any)) != 1 {
		t.Fatalf("upstream-keys list after delete: %v", l)
	}
	admin.run(1, "upstream-keys", "delete", "user/alice", "--tenant", "university")

	// The quarantine: the platform admins'; the API's answer with -o json.
	q := admin.json("usage", "quarantine", "--limit", "5")
	code, api = call(t, "GET", w.s.url+"/api/v1/admin/usage/quarantine?limit=5", admin.key, "")
	if code != 200 || !reflect.DeepEqual(q, api) {
		t.Fatalf("usage quarantine -o json: %v, want the API's %d %v", q, code, api)
	}
	wantIn(t, "usage quarantine (terminal)", admin.tty("usage", "quarantine"), []string{"(none)"})
	wantIn(t, "usage quarantine --limit 0", admin.run(1, "usage", "quarantine", "--limit", "0"), []string{"invalid", "flag --limit"})
	wantIn(t, "a member's usage quarantine", alice.run(1, "usage", "quarantine"), []string{"forbidden"})
}

// TestCLIAlertsAndCredits: the alert webhook's generated secret is shown
// once and never again, a chosen one never; a crossing shows in the
// delivery log; credit is topped up, codes are made (shown once, listed
// without their codes) and redeemed from stdin and from a file.
func TestCLIAlertsAndCredits(t *testing.T) {
	hook := newAlertHook(t, "tenant")
	w := startCLIWorld(t, func(c *config.Config) {
		c.AllowHosts = []string{"127.0.0.1:*"}
		c.Alerts.Interval = config.Duration(100 * time.Millisecond)
	})
	admin, alice := w.admin, w.alice

	wantIn(t, "alerts webhook get (none)", admin.run(1, "alerts", "webhook", "get", "--tenant", "university"), []string{"not_found", "no alert webhook"})
	code, out, errOut := cli(t, w.s.url, admin.key, "alerts", "webhook", "set", "--tenant", "university", "--url", hook.srv.URL, "-o", "json")
	var set map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &set) != nil {
		t.Fatalf("alerts webhook set: %d %s %s", code, out, errOut)
	}
	secret, _ := set["secret"].(string)
	if !strings.HasPrefix(secret, "whsec_") || set["url"] != hook.srv.URL || set["tenant_id"] != w.uni || !strings.Contains(errOut, "shown this once") {
		t.Fatalf("alerts webhook set: %v / %s", set, errOut)
	}
	got := admin.json("alerts", "webhook", "get", "--tenant", "university")
	if got["url"] != hook.srv.URL || got["secret"] != nil {
		t.Fatalf("alerts webhook get: %v", got)
	}
	wantIn(t, "alerts webhook get (terminal)", admin.tty("alerts", "webhook", "get", "--tenant", "university"), []string{hook.srv.URL, "university"}, secret)
	// A chosen secret is used and never shown.
	chosen := "chosen-webhook-secret-0123456789abcdef"
	code, out, errOut = cli(t, w.s.url, admin.key, "alerts", "webhook", "set", "--tenant", "university", "--url", hook.srv.URL, "--secret-file", secretFile(t, chosen))
	if code != 0 || strings.Contains(out+errOut, chosen) || strings.Contains(out, `"secret"`) || strings.Contains(errOut, "shown this once") {
		t.Fatalf("alerts webhook set --secret-file: %d %s %s", code, out, errOut)
	}
	wantIn(t, "alerts webhook set --url ftp://…", admin.run(1, "alerts", "webhook", "set", "--tenant", "university", "--url", "ftp://example.com/x"),
		[]string{"invalid", "flag --url"})
	wantIn(t, "alerts webhook set (no url)", admin.run(2, "alerts", "webhook", "set", "--tenant", "university"), []string{"--url"})
	wantIn(t, "alerts webhook set --tenant nowhere", admin.run(1, "alerts", "webhook", "set", "--tenant", "nowhere", "--url", hook.srv.URL),
		[]string{"--tenant", `"nowhere"`, "university"})
	wantIn(t, "a member's alerts webhook get", alice.run(1, "alerts", "webhook", "get"), []string{"forbidden"})

	// A crossing of alice's daily tokens is delivered, signed with the
	// chosen secret, and shows in the log by name.
	admin.run(0, "limits", "set", "user/alice", "--tenant", "university", "--limits", `{"tokens":"10000/day"}`)
	code, adm := call(t, "POST", w.s.url+"/api/v1/quota/acquire", alice.key, `{"tokens":9500}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, adm)
	}
	if code, body := call(t, "POST", w.s.url+"/api/v1/quota/settle", alice.key, `{"ticket":"`+adm["ticket"].(string)+`","input_tokens":9500}`); code != 200 {
		t.Fatalf("settle: %d %v", code, body)
	}
	hook.wait(t, 2)
	eventually(t, patience, "two deliveries in the log", func() bool {
		return len(admin.json("alerts", "deliveries", "--tenant", "university", "--status", "delivered")["items"].([]any)) == 2
	})
	wantIn(t, "alerts deliveries (terminal)", admin.tty("alerts", "deliveries", "--tenant", "university"),
		[]string{"SCOPE", "STATUS", "user/alice", "tokens", "delivered", "80", "90"}, chosen, secret)
	wantIn(t, "alerts deliveries --status lost", admin.run(1, "alerts", "deliveries", "--status", "lost"), []string{"invalid", "flag --status"})
	admin.run(0, "alerts", "webhook", "delete", "--tenant", "university")
	admin.run(1, "alerts", "webhook", "get", "--tenant", "university")

	// Credit: a top-up by names, the balance and its history.
	e := admin.json("credits", "topup", "user/alice", "--tenant", "university", "--tokens", "1000", "--note", "exam week")
	if e["balance_tokens"] != 1000.0 || e["scope"] != "user/"+w.aliceID || e["kind"] != "topup" {
		t.Fatalf("credits topup: %v", e)
	}
	b := alice.json("credits", "show")
	if b["tokens"] != 1000.0 || len(b["entries"].([]any)) != 1 {
		t.Fatalf("credits show (alice): %v", b)
	}
	wantIn(t, "credits show (terminal)", admin.tty("credits", "show", "--scope", "user/alice", "--tenant", "university"),
		[]string{"user/alice", "1000", "HISTORY", "topup", "exam week"})
	wantIn(t, "credits topup --tokens lots", admin.run(2, "credits", "topup", "user/alice", "--tenant", "university", "--tokens", "lots"), []string{"--tokens", `"lots"`})
	wantIn(t, "credits topup --tokens -5", admin.run(1, "credits", "topup", "user/alice", "--tenant", "university", "--tokens", "-5"), []string{"invalid", "flag --tokens"})
	wantIn(t, "credits topup (no amount)", admin.run(2, "credits", "topup", "user/alice", "--tenant", "university"), []string{"--tokens", "--cost-usd"})
	wantIn(t, "a member's topup", alice.run(1, "credits", "topup", "user/alice", "--tokens", "5"), []string{"forbidden"})

	// Redeem codes: shown once, listed without them, redeemed once.
	code, out, errOut = cli(t, w.s.url, admin.key, "credit-codes", "create", "--tenant", "university", "--tokens", "500", "--count", "2",
		"--expires-in", "30d", "--note", "workshop", "-o", "json")
	var made struct {
		Items []struct {
			Code string `json:"code"`
		} `json:"items"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &made) != nil || len(made.Items) != 2 || !strings.HasPrefix(made.Items[0].Code, "slc_") ||
		!strings.Contains(errOut, "shown this once") {
		t.Fatalf("credit-codes create: %d %s %s", code, out, errOut)
	}
	codes := []string{made.Items[0].Code, made.Items[1].Code}
	if l := admin.json("credit-codes", "list", "--tenant", "university"); len(l["items"].([]any)) != 2 ||
		strings.Contains(mustJSON(l), codes[0]) || strings.Contains(mustJSON(l), codes[1]) {
		t.Fatalf("credit-codes list: %v", l)
	}
	wantIn(t, "credit-codes list (terminal)", admin.tty("credit-codes", "list", "--tenant", "university"), []string{"PREFIX", "open", "workshop"}, codes...)
	wantIn(t, "credit-codes create --count many", admin.run(2, "credit-codes", "create", "--tokens", "5", "--count", "many"), []string{"--count"})
	wantIn(t, "credit-codes create --count 1000", admin.run(1, "credit-codes", "create", "--tenant", "university", "--tokens", "5", "--count", "1000"),
		[]string{"invalid", "flag --count"})
	wantIn(t, "credit-codes create --expires-in soon", admin.run(2, "credit-codes", "create", "--tokens", "5", "--expires-in", "soon"), []string{"--expires-in"})

	withStdin(t, strings.NewReader(codes[0]+"\n"))
	if e := alice.json("credits", "redeem"); e["balance_tokens"] != 1500.0 || e["kind"] != "redeem" {
		t.Fatalf("credits redeem < stdin: %v", e)
	}
	withStdin(t, strings.NewReader(codes[0]+"\n"))
	wantIn(t, "credits redeem (twice)", alice.run(1, "credits", "redeem"), nil, codes[0])
	if e := alice.json("credits", "redeem", "--code-file", secretFile(t, codes[1])); e["balance_tokens"] != 2000.0 {
		t.Fatalf("credits redeem --code-file: %v", e)
	}
	wantIn(t, "credits redeem, a bad code", alice.run(1, "credits", "redeem", "--code-file", secretFile(t, "not-a-code")),
		[]string{"invalid", "flag --code-file"}, "not-a-code")
	withStdin(t, strings.NewReader("\n"))
	wantIn(t, "credits redeem < empty", alice.run(2, "credits", "redeem"), []string{"--code-file"})
	wantIn(t, "credit-codes list after redeeming", admin.tty("credit-codes", "list", "--tenant", "university"), []string{"redeemed", "alice"}, codes...)
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestCLIFiles: a member uploads files to her project (from a path and
// from stdin), lists them, downloads by name and id (checked against the
// server's size and SHA-256, never over an existing file) and deletes
// one; another tenant's member cannot reach them.
func TestCLIFiles(t *testing.T) {
	w := startCLIWorld(t, nil)
	admin, alice := w.admin, w.alice
	dir := t.TempDir()
	notes := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notes, []byte("the launch code is PINEAPPLE-42\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := alice.json("files", "upload", notes)
	if up["name"] != "notes" || up["path"] != w.prj+"/notes.txt" {
		t.Fatalf("files upload: %v", up)
	}
	withStdin(t, strings.NewReader("second version"))
	if up2 := alice.json("files", "upload", "-", "--name", "notes.txt", "--project", "group-1"); up2["path"] != w.prj+"/notes (1).txt" {
		t.Fatalf("files upload - --name notes.txt: %v", up2)
	}
	wantIn(t, "files upload - (no name)", alice.run(2, "files", "upload", "-"), []string{"--name"})
	wantIn(t, "files upload (missing)", alice.run(2, "files", "upload", filepath.Join(dir, "missing.txt")), []string{"missing.txt"})

	code, out, _ := cli(t, w.s.url, alice.key, "files", "list", "-o", "json")
	var items []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &items) != nil || len(items) != 2 {
		t.Fatalf("files list -o json: %d %s", code, out)
	}
	wantIn(t, "files list (terminal)", admin.tty("files", "list", "--tenant", "university", "--project", "group-1"),
		[]string{"NAME", "SIZE", "notes.txt", "notes (1).txt", "alice", "32"})

	// Download by name, by stored name, by id; to a path, to stdout.
	to := filepath.Join(dir, "got.txt")
	alice.run(0, "files", "download", "notes", "--to", to)
	if b, _ := os.ReadFile(to); string(b) != "the launch code is PINEAPPLE-42\n" {
		t.Fatalf("files download notes: %q", b)
	}
	wantIn(t, "files download over a file", alice.run(2, "files", "download", "notes", "--to", to), []string{"exists", "--to"})
	if out := alice.run(0, "files", "download", "notes (1).txt", "--to", "-"); !strings.HasPrefix(out, "second version") {
		t.Fatalf("files download --to -: %q", out)
	}
	t.Chdir(dir)
	alice.run(0, "files", "download", items[1]["id"].(string))
	if b, err := os.ReadFile(filepath.Join(dir, "notes (1).txt")); err != nil || string(b) != "second version" {
		t.Fatalf("files download ID (to its stored name): %q %v", b, err)
	}
	// Bytes that differ from the server's record are not kept.
	var stored string
	_ = filepath.WalkDir(w.dataDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Base(p) == items[0]["id"] { // Dir/<tenant>/<project>/<file id>
			stored = p
		}
		return nil
	})
	if stored == "" {
		t.Fatalf("the bytes of %s not found under %s", items[0]["id"], w.dataDir)
	}
	if err := os.WriteFile(stored, []byte("the launch code is PAPAYA-99999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "tampered.txt")
	wantIn(t, "files download of altered bytes", alice.run(1, "files", "download", "notes.txt", "--to", bad), []string{"SHA-256", "nothing kept"})
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Fatalf("a download that failed its check left %s: %v", bad, err)
	}
	wantIn(t, "files download nothing", alice.run(1, "files", "download", "report"), []string{"not_found", `"report"`, "notes.txt"})

	// Another tenant cannot see the project or its files.
	admin.json("tenants", "create", "--name", "corp")
	admin.json("users", "create", "--tenant", "corp", "--name", "bob")
	admin.json("projects", "create", "--tenant", "corp", "--name", "lab")
	admin.run(0, "memberships", "add", "--tenant", "corp", "--user", "bob", "--project", "lab")
	bob := sluiceCLI{t, w.s.url, admin.json("keys", "create", "--tenant", "corp", "--user", "bob", "--project", "lab")["secret"].(string)}
	wantIn(t, "bob's files list --project <alice's>", bob.run(1, "files", "list", "--project", w.prj), []string{"not_found"}, "notes")
	wantIn(t, "bob's files download <alice's id>", bob.run(1, "files", "download", items[0]["id"].(string), "--project", w.prj), []string{"not_found"})

	alice.run(0, "files", "delete", "notes.txt")
	code, out, _ = cli(t, w.s.url, alice.key, "files", "list", "-o", "json")
	if json.Unmarshal([]byte(out), &items) != nil || code != 0 || len(items) != 1 || items[0]["name"] != "notes (1)" {
		t.Fatalf("files after delete: %s", out)
	}
}
