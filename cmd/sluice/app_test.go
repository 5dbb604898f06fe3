package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/config"
)

// TestMain lets a test run this binary's main: with SLUICE_TEST_MAIN=1 the
// test binary behaves as the sluice command (used to test signals).
func TestMain(m *testing.M) {
	if os.Getenv("SLUICE_TEST_MAIN") == "1" {
		os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
	}
	os.Exit(m.Run())
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// started is an app serving on 127.0.0.1:0.
type started struct {
	app    *App
	url    string
	stdout *lockedBuffer
	logs   *lockedBuffer
	stop   func() error
}

func start(t *testing.T, cfg config.Config) *started {
	t.Helper()
	s := &started{stdout: &lockedBuffer{}, logs: &lockedBuffer{}}
	log := slog.New(slog.NewJSONHandler(s.logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	app, err := NewApp(ctx, cfg, log, s.stdout)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := app.Listen(); err != nil {
		cancel()
		t.Fatal(err)
	}
	s.app, s.url = app, "http://"+app.Addr()
	done := make(chan error, 1)
	go func() { done <- app.Serve(ctx) }()
	var once sync.Once
	var stopErr error
	s.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(20 * time.Second):
				t.Error("server did not stop within 20s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = s.stop() })
	return s
}

func testConfig(t *testing.T) config.Config {
	cfg := config.Default()
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	// A full concurrency limit refuses at once, as these tests expect;
	// queue_test.go turns the queue on.
	cfg.Admission.MaxWait = 0
	return cfg
}

// cli runs a sluice client command against url with key.
func cli(t *testing.T, url, key string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := map[string]string{"SLUICE_SERVER": url, "SLUICE_API_KEY": key}
	code := realMain(args, &out, &errOut, func(k string) string { return env[k] })
	return code, out.String(), errOut.String()
}

var keyPattern = regexp.MustCompile(`slk_[A-Za-z0-9_-]{43}`)

func TestEndToEndGeneratedAdminKey(t *testing.T) {
	cfg := testConfig(t)
	s := start(t, cfg)
	secret := keyPattern.FindString(s.stdout.String())
	if secret == "" {
		t.Fatalf("no key in the start-up banner: %q", s.stdout.String())
	}
	path := filepath.Join(cfg.DataDir, "admin.key")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.key mode: got %v, want 0600", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(path); strings.TrimSpace(string(b)) != secret {
		t.Fatal("admin.key differs from the printed key")
	}

	resp, err := http.Get(s.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	code, out, errOut := cli(t, s.url, secret, "tenants", "create", "--name", "university", "--timezone", "Asia/Shanghai")
	if code != 0 {
		t.Fatalf("tenants create: exit %d: %s", code, errOut)
	}
	var tenant struct{ ID, Timezone string }
	if err := json.Unmarshal([]byte(out), &tenant); err != nil || tenant.Timezone != "Asia/Shanghai" {
		t.Fatalf("tenants create output: %s (%v)", out, err)
	}
	code, out, _ = cli(t, s.url, secret, "departments", "create", "--tenant-id", tenant.ID, "--name", "cs101")
	if code != 0 {
		t.Fatalf("departments create: %d %s", code, out)
	}
	code, out, _ = cli(t, s.url, secret, "whoami")
	if code != 0 || !strings.Contains(out, `"platform_admin"`) {
		t.Fatalf("whoami: %d %s", code, out)
	}
	// Errors reach the terminal with their field.
	code, _, errOut = cli(t, s.url, secret, "tenants", "create", "--name", "university")
	if code != 1 || !strings.Contains(errOut, "conflict") || !strings.Contains(errOut, "field name") {
		t.Fatalf("duplicate tenant: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = cli(t, s.url, secret, "tenants", "create", "--colour", "red")
	if code != 2 || !strings.Contains(errOut, "--colour") {
		t.Fatalf("unknown flag: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = cli(t, s.url, "slk_wrong", "tenants", "list")
	if code != 1 || !strings.Contains(errOut, "unauthorized") {
		t.Fatalf("bad key: exit %d, stderr %q", code, errOut)
	}

	if err := s.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if strings.Contains(s.logs.String(), secret) {
		t.Fatal("the admin key appears in the logs")
	}

	// A restart keeps the data and does not make a second admin.
	s2 := start(t, cfg)
	if keyPattern.MatchString(s2.stdout.String()) {
		t.Fatalf("restart printed a new key: %q", s2.stdout.String())
	}
	code, out, _ = cli(t, s2.url, secret, "tenants", "list")
	if code != 0 || !strings.Contains(out, "university") {
		t.Fatalf("tenants after restart: %d %s", code, out)
	}
}

func TestBootstrapFromEnvironment(t *testing.T) {
	cfg := testConfig(t)
	cfg.AdminKey = "operator-chosen-admin-key-0123456789abcdef"
	s := start(t, cfg)
	if s.stdout.String() != "" {
		t.Fatalf("printed a banner although the key was given: %q", s.stdout.String())
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "admin.key")); !os.IsNotExist(err) {
		t.Fatalf("admin.key written although the key was given: %v", err)
	}
	if code, out, errOut := cli(t, s.url, string(cfg.AdminKey), "whoami"); code != 0 {
		t.Fatalf("whoami with SLUICE_ADMIN_KEY: %d %s %s", code, out, errOut)
	}
	if strings.Contains(s.logs.String(), string(cfg.AdminKey)) {
		t.Fatal("SLUICE_ADMIN_KEY appears in the logs")
	}
	s.stop()

	// Later starts ignore a different SLUICE_ADMIN_KEY: the first one stays.
	first := cfg.AdminKey
	cfg.AdminKey = "another-operator-key-0123456789abcdefghij"
	s2 := start(t, cfg)
	if code, _, _ := cli(t, s2.url, string(cfg.AdminKey), "whoami"); code == 0 {
		t.Fatal("a second SLUICE_ADMIN_KEY was accepted after bootstrap")
	}
	if code, _, _ := cli(t, s2.url, string(first), "whoami"); code != 0 {
		t.Fatal("the first admin key stopped working")
	}
}

func TestBootstrapRejectsWeakKey(t *testing.T) {
	cfg := testConfig(t)
	cfg.AdminKey = "short"
	_, err := NewApp(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "SLUICE_ADMIN_KEY") {
		t.Fatalf("got %v, want an error naming SLUICE_ADMIN_KEY", err)
	}
}

func TestServeRejectsBadConfig(t *testing.T) {
	tests := []struct {
		args  []string
		env   map[string]string
		field string
	}{
		{[]string{"serve", "--addr", "nonsense"}, nil, "addr"},
		{[]string{"serve", "--log-level", "loud"}, nil, "log_level"},
		{[]string{"serve"}, map[string]string{"SLUICE_LOG_FORMAT": "xml"}, "log_format"},
		{[]string{"serve"}, map[string]string{"SLUICE_SHUTDOWN_TIMEOUT": "soon"}, "SLUICE_SHUTDOWN_TIMEOUT"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		code := realMain(tt.args, &out, &errOut, func(k string) string { return tt.env[k] })
		if code != 1 || !strings.Contains(errOut.String(), "field "+tt.field) {
			t.Errorf("%v %v: exit %d, stderr %q; want 1 naming field %s", tt.args, tt.env, code, errOut.String(), tt.field)
		}
	}
	// A config file with an unknown field is refused.
	f := filepath.Join(t.TempDir(), "sluice.yaml")
	os.WriteFile(f, []byte("addr: 127.0.0.1:0\nlisten: 1\n"), 0o600)
	var errOut bytes.Buffer
	if code := realMain([]string{"serve", "--config", f}, io.Discard, &errOut, func(string) string { return "" }); code != 1 || !strings.Contains(errOut.String(), "listen") {
		t.Fatalf("unknown config field: exit %d, stderr %q", code, errOut.String())
	}
}

func TestPrintConfigRedactsSecrets(t *testing.T) {
	var out bytes.Buffer
	env := map[string]string{"SLUICE_ADMIN_KEY": "super-secret-admin-key-0123456789abcdef"}
	if code := realMain([]string{"serve", "--print-config"}, &out, io.Discard, func(k string) string { return env[k] }); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if strings.Contains(out.String(), "super-secret") || !strings.Contains(out.String(), "<redacted>") {
		t.Fatalf("printed config: %s", out.String())
	}
}

func TestVersionAndUsage(t *testing.T) {
	var out bytes.Buffer
	if code := realMain([]string{"version"}, &out, io.Discard, os.Getenv); code != 0 || !strings.HasPrefix(out.String(), "sluice ") {
		t.Fatalf("version: %d %q", code, out.String())
	}
	if code := realMain(nil, io.Discard, io.Discard, os.Getenv); code != 2 {
		t.Fatalf("no args: exit %d, want 2", code)
	}
	if code := realMain([]string{"frobnicate"}, io.Discard, io.Discard, os.Getenv); code != 2 {
		t.Fatalf("unknown command: exit %d, want 2", code)
	}
}

// TestSIGTERMShutsDownGracefully runs the real command in a child process
// and stops it with SIGTERM.
func TestSIGTERMShutsDownGracefully(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "serve", "--addr", "127.0.0.1:0", "--data", dir, "--log-format", "json")
	cmd.Env = append(os.Environ(), "SLUICE_TEST_MAIN=1")
	stderr, _ := cmd.StderrPipe()
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	addr := ""
	for addr == "" && sc.Scan() {
		var line struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "sluice serving" {
			addr = line.Addr
		}
	}
	if addr == "" {
		cmd.Process.Kill()
		t.Fatal("server never reported its address")
	}
	if resp, err := http.Get("http://" + addr + "/readyz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	go io.Copy(io.Discard, stderr)
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("no exit within 20s of SIGTERM")
	}
}
