package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIApplyWhatIf drives sluice apply --what-if against the app: use
// settled through the metering API is replayed against a draft that
// limits alice to 250 tokens a month, which would have denied three of
// her five calls of 100; the table and -o json say so, the policy in force
// is the same afterwards, and a window past 90 days is refused naming it.
func TestCLIApplyWhatIf(t *testing.T) {
	s := start(t, testConfig(t))
	root := keyPattern.FindString(s.stdout.String())
	a := applyPolicy(t, s.url, root, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web]}
`)
	for range 5 {
		code, adm := call(t, "POST", s.url+"/api/v1/quota/acquire", a.key, `{"tokens":100}`)
		if code != 200 {
			t.Fatalf("acquire: %d %v", code, adm)
		}
		if code, body := call(t, "POST", s.url+"/api/v1/quota/settle", a.key, `{"ticket":"`+adm["ticket"].(string)+`","input_tokens":60,"output_tokens":40}`); code != 200 {
			t.Fatalf("settle: %d %v", code, body)
		}
	}
	draft := filepath.Join(t.TempDir(), "draft.yaml")
	if err := os.WriteFile(draft, []byte(`
tenants:
  - name: acme
    users:
      - {name: alice, limits: {tokens: 250/month}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, before, _ := cli(t, s.url, root, "export")

	code, out, errOut := cli(t, s.url, root, "apply", "-f", draft, "--what-if", "7d")
	if code != 0 {
		t.Fatalf("apply --what-if: exit %d: %s%s", code, out, errOut)
	}
	var row string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(line, "user alice ") {
			row = line
		}
	}
	// SCOPE DIMENSION LIMIT DENIED DENIED-TOKENS DENIED-RUNS CLAMPED QUEUED FIRST-WALL-AT
	if f := strings.Fields(row); len(f) != 10 || f[2] != "tokens/month" || f[3] != "250" || f[4] != "3" || f[5] != "300" || f[6] != "0" {
		t.Errorf("got row %q, want user alice, tokens/month, 250, 3 denied of 300 tokens, in:\n%s", row, out)
	}
	if !strings.Contains(out, "5 events and 0 runs replayed") || !strings.Contains(out, "nothing applied") {
		t.Errorf("got %s, want the totals and that nothing was applied", out)
	}

	code, out, errOut = cli(t, s.url, root, "apply", "-f", draft, "--what-if", "24h", "-o", "json")
	if code != 0 {
		t.Fatalf("apply --what-if -o json: exit %d: %s%s", code, out, errOut)
	}
	var rep struct {
		Walls []struct {
			Scope  string
			Denied struct{ Asks, Tokens int64 }
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("-o json: %v: %s", err, out)
	}
	if len(rep.Walls) != 1 || rep.Walls[0].Scope != "user/"+a.userID || rep.Walls[0].Denied.Asks != 3 {
		t.Errorf("-o json: got %+v, want alice's wall with 3 denied", rep.Walls)
	}

	if _, after, _ := cli(t, s.url, root, "export"); after != before {
		t.Errorf("the policy changed:\nbefore %s\nafter %s", before, after)
	}
	if code, adm := call(t, "POST", s.url+"/api/v1/quota/acquire", a.key, `{"tokens":100}`); code != 200 {
		t.Errorf("after the what-if alice's call: %d %v, want 200 (the draft is not in force)", code, adm)
	}

	code, out, errOut = cli(t, s.url, root, "apply", "-f", draft, "--what-if", "91d")
	if code == 0 || !strings.Contains(errOut, "window") {
		t.Errorf("--what-if 91d: exit %d, %s%s; want a failure naming window", code, out, errOut)
	}
}
