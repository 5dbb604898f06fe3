package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/policydoc"
)

// The tests in this file keep the docs and the deployment files true to the
// binary: every flag the docs show exists, the flags of
// docs/configuration.md's table set their fields, and the Dockerfile's and
// the Kubernetes manifests' command lines and config start a server.

// helpFlags returns the flags `sluice CMD -h` lists.
func helpFlags(t *testing.T, cmd string) []string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := realMain([]string{cmd, "-h"}, &out, &errOut, func(string) string { return "" }); code != 0 {
		t.Fatalf("sluice %s -h: exit %d: %s", cmd, code, errOut.String())
	}
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z][a-z-]*)`).FindAllStringSubmatch(errOut.String(), -1) {
		flags = append(flags, m[1])
	}
	if len(flags) == 0 {
		t.Fatalf("sluice %s -h lists no flags: %s", cmd, errOut.String())
	}
	return flags
}

// clientFlags are the flags the client commands accept (clientArgs takes
// any --name, and each command then reads the ones it knows).
func clientFlags() []string {
	flags := []string{"server", "f", "file", "dry-run", "format", "scope", "user-id", "project-id"}
	add := func(names []string) {
		for _, n := range names {
			flags = append(flags, strings.ReplaceAll(n, "_", "-"))
		}
	}
	for _, r := range resources {
		add(r.fields)
	}
	add(listFilters)
	for _, names := range requestFlags {
		add(names)
	}
	add(usageReportFlags)
	add(limitsSetFields)
	add(whatIfFlags)
	return flags
}

// otherPrograms are commands the docs show with flags of their own.
var otherPrograms = map[string]bool{"curl": true, "redis-server": true, "redis-cli": true, "redis-benchmark": true,
	"docker": true, "kubectl": true, "psql": true, "pg_ctl": true, "initdb": true, "git": true, "go": true}

var docFlag = regexp.MustCompile(`^--[a-z][a-z-]*(=|$)`)

var docWord = regexp.MustCompile("[^\\s`()\\[\\],;|]+")

// TestDocsShowOnlyRealFlags: a --flag in README.md or docs/*.md after
// `sluice serve` is a flag of serve, after `sluice run` one of run, after
// another sluice command one of the client's; a --flag with no command
// before it on its line must be one of sluice's. Flags after another
// program (curl, redis-server, …) are that program's business.
func TestDocsShowOnlyRealFlags(t *testing.T) {
	serve, run, client := helpFlags(t, "serve"), helpFlags(t, "run"), clientFlags()
	anySluice := slices.Concat(serve, run, client)
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../../README.md")
	checked := 0
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		// A line ending in a backslash continues on the next.
		text := strings.ReplaceAll(string(b), "\\\n", " ")
		for n, line := range strings.Split(text, "\n") {
			known, cmd := anySluice, "sluice"
			words := docWord.FindAllString(line, -1)
			for i, w := range words {
				switch {
				case w == "sluice" || strings.HasSuffix(w, "/sluice"):
					known, cmd = anySluice, "sluice"
					if i+1 < len(words) {
						switch next := words[i+1]; {
						case next == "serve":
							known, cmd = serve, "sluice serve"
						case next == "run":
							known, cmd = run, "sluice run"
						case !strings.HasPrefix(next, "-"):
							known, cmd = client, "sluice "+next
						}
					}
				case otherPrograms[w]:
					known, cmd = nil, w
				case docFlag.MatchString(w):
					if known == nil {
						continue
					}
					name, _, _ := strings.Cut(w[2:], "=")
					checked++
					if !slices.Contains(known, name) {
						t.Errorf("%s:%d: --%s is no flag of %s: %s", file, n+1, name, cmd, strings.TrimSpace(line))
					}
				}
			}
		}
	}
	if checked < 10 {
		t.Errorf("checked only %d flags in the docs: is the scanner broken?", checked)
	}
}

// flagSamples are valid values of serve's flags, by the field they set.
var flagSamples = map[string]string{
	"addr": "0.0.0.0:9999", "data_dir": "/srv/sluice-docs-test", "database_url": "sqlite:/srv/docs-test.db",
	"log_level": "debug", "log_format": "text", "langflow.upstream": "http://langflow.internal:7860",
}

// configField reads a dotted field (langflow.upstream) of a printed config.
func configField(m map[string]any, field string) any {
	var v any = m
	for part := range strings.SplitSeq(field, ".") {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[part]
	}
	return v
}

// printConfig runs `sluice serve ARGS --print-config` and returns what it
// printed, parsed.
func printConfig(t *testing.T, args []string, env map[string]string) map[string]any {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append(append([]string{"serve"}, args...), "--print-config")
	if code := realMain(args, &out, &errOut, func(k string) string { return env[k] }); code != 0 {
		t.Fatalf("sluice %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	var m map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("--print-config printed no YAML: %v\n%s", err, out.String())
	}
	return m
}

// TestDocsFlagColumn: each flag in docs/configuration.md's table sets the
// field of its row, and every flag of serve but --config and --print-config
// has a row.
func TestDocsFlagColumn(t *testing.T) {
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	serve := helpFlags(t, "serve")
	documented := map[string]bool{}
	for line := range strings.SplitSeq(string(b), "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if !strings.HasPrefix(line, "| `") || len(cells) < 3 || cells[2] == "—" {
			continue
		}
		field, flag := strings.Trim(cells[0], "`"), strings.TrimPrefix(strings.Trim(cells[2], "`"), "--")
		documented[flag] = true
		if !slices.Contains(serve, flag) {
			t.Errorf("docs/configuration.md: %s's flag --%s is no flag of sluice serve (%v)", field, flag, serve)
			continue
		}
		sample, ok := flagSamples[field]
		if !ok {
			t.Errorf("no sample value for %s's flag --%s: add one to flagSamples", field, flag)
			continue
		}
		if got := configField(printConfig(t, []string{"--" + flag, sample}, nil), field); got != sample {
			t.Errorf("sluice serve --%s %s printed %s: %v, want %s", flag, sample, field, got, sample)
		}
	}
	for _, f := range serve {
		if f != "config" && f != "print-config" && !documented[f] {
			t.Errorf("sluice serve --%s has no row in docs/configuration.md's table", f)
		}
	}
}

// manifest is what the tests read of a Kubernetes object.
type manifest struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Template struct {
			Spec struct {
				Containers []struct {
					Name string   `yaml:"name"`
					Args []string `yaml:"args"`
					Env  []struct {
						Name      string `yaml:"name"`
						Value     string `yaml:"value"`
						ValueFrom struct {
							SecretKeyRef struct {
								Name string `yaml:"name"`
								Key  string `yaml:"key"`
							} `yaml:"secretKeyRef"`
						} `yaml:"valueFrom"`
					} `yaml:"env"`
					ReadinessProbe struct {
						HTTPGet struct {
							Path string `yaml:"path"`
						} `yaml:"httpGet"`
					} `yaml:"readinessProbe"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// deployFiles parses every YAML and JSON file under deploy/, each document
// of each file.
func deployFiles(t *testing.T) map[string][]manifest {
	t.Helper()
	out := map[string][]manifest{}
	err := filepath.WalkDir("../../deploy", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch filepath.Ext(path) {
		case ".yaml", ".yml", ".json":
		default:
			t.Errorf("%s: a file the test cannot check (want .yaml, .yml or .json)", path)
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if filepath.Ext(path) == ".json" && !json.Valid(b) {
			t.Errorf("%s is not valid JSON", path)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var m manifest
			if err := dec.Decode(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Errorf("%s: document %d: %v", path, len(out[path])+1, err)
				break
			}
			out[path] = append(out[path], m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDeployManifests: every file under deploy/ parses; the Kubernetes
// ConfigMap's config and policy are valid and choose sandbox.unenforced
// explicitly; and the Deployment's command line, with that config and the
// Secret's values in its environment, starts `sluice serve`.
func TestDeployManifests(t *testing.T) {
	files := deployFiles(t)
	docs := files["../../deploy/kubernetes/sluice.yaml"]
	if len(docs) == 0 {
		t.Fatal("deploy/kubernetes/sluice.yaml: no documents")
	}
	objects := map[string]manifest{}
	for _, m := range docs {
		objects[m.Kind] = m
	}
	cm, secret, dep := objects["ConfigMap"], objects["Secret"], objects["Deployment"]

	cfg := config.Default()
	if err := cfg.Parse(strings.NewReader(cm.Data["sluice.yaml"])); err != nil {
		t.Fatalf("the ConfigMap's sluice.yaml: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the ConfigMap's sluice.yaml: %v", err)
	}
	var raw struct {
		Sandbox map[string]any `yaml:"sandbox"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["sluice.yaml"]), &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw.Sandbox["unenforced"]; !ok {
		t.Errorf("the ConfigMap's sluice.yaml leaves sandbox.unenforced to its default; the manifests must choose it explicitly")
	}
	if cfg.Sandbox.Unenforced != config.UnenforcedUnready {
		t.Errorf("the manifests ship sandbox.unenforced %q, want %q: an unprivileged pod cannot enforce the pro and enterprise plans' memory_per_run, "+
			"so it must not report ready until the operator chooses", cfg.Sandbox.Unenforced, config.UnenforcedUnready)
	}
	if _, err := policydoc.Parse([]byte(cm.Data["policy.yaml"])); err != nil {
		t.Errorf("the ConfigMap's policy.yaml: %v", err)
	}

	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("the Deployment has %d containers, want 1", len(dep.Spec.Template.Spec.Containers))
	}
	c := dep.Spec.Template.Spec.Containers[0]
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("the readiness probe asks %q, want /readyz", c.ReadinessProbe.HTTPGet.Path)
	}
	env := map[string]string{}
	apiKeyEnv := map[string]bool{}
	for _, m := range cfg.Models {
		apiKeyEnv[m.APIKeyEnv] = true
	}
	for _, e := range c.Env {
		v := e.Value
		if ref := e.ValueFrom.SecretKeyRef; ref.Name != "" {
			if ref.Name != secret.Metadata.Name {
				t.Errorf("env %s names the Secret %q, want %q", e.Name, ref.Name, secret.Metadata.Name)
			}
			var ok bool
			if v, ok = secret.StringData[ref.Key]; !ok {
				t.Errorf("env %s takes key %q, which the Secret does not have", e.Name, ref.Key)
			}
		}
		env[e.Name] = v
		if !strings.HasPrefix(e.Name, "SLUICE_") && !apiKeyEnv[e.Name] {
			t.Errorf("env %s is neither a SLUICE_ variable nor a model's api_key_env", e.Name)
		}
	}
	// The config file is where the ConfigMap is mounted; here, a copy.
	args := slices.Clone(c.Args)
	i := slices.Index(args, "--config")
	if len(args) == 0 || args[0] != "serve" || i < 0 || i+1 >= len(args) {
		t.Fatalf("the Deployment's args %q, want serve --config FILE", c.Args)
	}
	file := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(file, []byte(cm.Data["sluice.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	args[i+1] = file
	got := printConfig(t, args[1:], env)
	for field, want := range map[string]any{"redis_url": config.RedactURL(secret.StringData["redis-url"]),
		"database_url": config.RedactURL(secret.StringData["database-url"]), "policy_file": "/etc/sluice/policy/policy.yaml"} {
		if got[field] != want {
			t.Errorf("the Deployment's server would run with %s %v, want %v", field, got[field], want)
		}
	}
	if sb, _ := got["sandbox"].(map[string]any); sb["unenforced"] != config.UnenforcedUnready {
		t.Errorf("the Deployment's server would run with sandbox %v, want unenforced: unready", got["sandbox"])
	}
}

// TestDockerfileCommand: the image's default command line starts `sluice
// serve`.
func TestDockerfileCommand(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CMD (\[.*\])$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("the Dockerfile has no CMD [...] line")
	}
	var args []string
	if err := json.Unmarshal(m[1], &args); err != nil {
		t.Fatalf("the Dockerfile's CMD: %v", err)
	}
	if len(args) == 0 || args[0] != "serve" {
		t.Fatalf("the Dockerfile's CMD %q, want serve …", args)
	}
	printConfig(t, args[1:], nil)
}
