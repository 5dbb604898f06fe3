package sandbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
)

// TestErrorsCrossTheWire: what the run and the API look at in an error
// survives the trip between worker and server, text included.
func TestErrorsCrossTheWire(t *testing.T) {
	denial := &quota.Denial{Code: quota.CodeQuotaExceeded, Scope: "user:u1", Dimension: quota.DimTokens, Window: quota.WindowDay,
		Limit: 1000, Used: 990, Requested: 40, ResetAt: time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC), RetryAfter: time.Hour}
	tests := []struct {
		name  string
		err   error
		check func(t *testing.T, got error)
	}{
		{"nil", nil, func(t *testing.T, got error) {
			if got != nil {
				t.Errorf("got %v, want nil", got)
			}
		}},
		{"domain error", errs.Field(errs.Unprocessable, "nodes.llm.model_name", "node llm asks for model %q", "x"), func(t *testing.T, got error) {
			var e *errs.Error
			if !errors.As(got, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.llm.model_name" || e.Message != `node llm asks for model "x"` {
				t.Errorf("got %#v, want the same *errs.Error", got)
			}
		}},
		{"denial in a run error", &run.RunError{Status: run.StatusQuotaExceeded, NodeID: "llm", Err: denial}, func(t *testing.T, got error) {
			var re *run.RunError
			if !errors.As(got, &re) || re.Status != run.StatusQuotaExceeded || re.NodeID != "llm" {
				t.Fatalf("got %#v, want a *run.RunError quota_exceeded at llm", got)
			}
			var d *quota.Denial
			if !errors.As(got, &d) {
				t.Fatalf("got %v, want a *quota.Denial inside", got)
			}
			if *d != *denial {
				t.Errorf("denial = %+v, want %+v", *d, *denial)
			}
		}},
		{"deadline", fmt.Errorf("simulated: %w", context.DeadlineExceeded), func(t *testing.T, got error) {
			if !errors.Is(got, context.DeadlineExceeded) {
				t.Errorf("got %v, want errors.Is DeadlineExceeded", got)
			}
		}},
		{"step limit", &run.RunError{Status: run.StatusStepLimitExceeded, NodeID: "agent", Err: errs.E(errs.QuotaExceeded, "the run reached its cap of 5 steps (max_steps)")},
			func(t *testing.T, got error) {
				var re *run.RunError
				if !errors.As(got, &re) || re.Status != run.StatusStepLimitExceeded || errs.CodeOf(got) != errs.QuotaExceeded {
					t.Errorf("got %#v, want step_limit_exceeded with code quota_exceeded", got)
				}
			}},
		{"plain", errors.New("boom"), func(t *testing.T, got error) {
			if errs.CodeOf(got) != errs.Internal {
				t.Errorf("code = %q, want internal", errs.CodeOf(got))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			c := newConn(&buf, &buf, maxFrame)
			if err := c.send(frameCallResult, 7, callResultBody{Error: encodeError(tt.err)}); err != nil {
				t.Fatal(err)
			}
			f, err := c.recv()
			if err != nil {
				t.Fatal(err)
			}
			var body callResultBody
			if err := json.Unmarshal(f.Body, &body); err != nil {
				t.Fatal(err)
			}
			got := body.Error.decode()
			tt.check(t, got)
			if tt.err != nil && got.Error() != tt.err.Error() {
				t.Errorf("text = %q, want %q", got.Error(), tt.err.Error())
			}
		})
	}
}

// TestFrameLimit: a peer cannot make the other side allocate more than the
// frame limit.
func TestFrameLimit(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], maxFrame+1)
	c := newConn(io.MultiReader(bytes.NewReader(hdr[:]), strings.NewReader("{}")), io.Discard, maxFrame)
	if _, err := c.recv(); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("recv of a frame over the limit = %v, want an error naming the limit", err)
	}
	c = newConn(strings.NewReader(""), io.Discard, maxFrame)
	if _, err := c.recv(); !errors.Is(err, io.EOF) {
		t.Errorf("recv at the end = %v, want io.EOF", err)
	}
}

func TestDetectWithoutCgroup(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, root, reason string
	}{
		{"disabled", "none", "disabled by configuration"},
		{"missing", filepath.Join(dir, "missing"), "not a cgroup v2 directory nor a cgroup v1 memory directory"},
		{"plain directory", dir, "not a cgroup v2 directory nor a cgroup v1 memory directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, reason := detect(tt.root)
			if h.mode != ModeNone || !strings.Contains(reason, tt.reason) {
				t.Errorf("detect(%q) = %q, %q; want none, a reason with %q", tt.root, h.mode, reason, tt.reason)
			}
		})
	}
	// A v2 directory whose memory controller is not delegated.
	v2 := filepath.Join(dir, "v2")
	os.Mkdir(v2, 0o755)
	os.WriteFile(filepath.Join(v2, "cgroup.controllers"), []byte("cpu hugetlb\n"), 0o644)
	if h, reason := detect(v2); h.mode != ModeNone || !strings.Contains(reason, "memory controller is not delegated") {
		t.Errorf("detect(v2 without memory) = %q, %q; want none, not delegated", h.mode, reason)
	}
}

func TestMountinfoPaths(t *testing.T) {
	for _, tt := range []struct{ path, root, want string }{
		{"/process_api/abc", "/", "/process_api/abc"},
		{"/a/b", "/a", "/b"},
		{"/a", "/a", "/"},
	} {
		if got, ok := under(tt.path, tt.root); !ok || got != tt.want {
			t.Errorf("under(%q, %q) = %q, %v; want %q", tt.path, tt.root, got, ok, tt.want)
		}
	}
	if _, ok := under("/ab/c", "/a"); ok {
		t.Errorf("under(/ab/c, /a) = ok, want not under")
	}
	if got := unescape(`/sys/fs/cgroup/with\040space`); got != "/sys/fs/cgroup/with space" {
		t.Errorf("unescape = %q", got)
	}
}

func TestReadKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "memory.oom_control")
	os.WriteFile(p, []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), 0o644)
	if v, ok := readKey(p, "oom_kill"); !ok || v != 3 {
		t.Errorf("readKey(oom_kill) = %d, %v; want 3, true", v, ok)
	}
	if _, ok := readKey(p, "oom_group_kill"); ok {
		t.Errorf("readKey of a missing key reported ok")
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{512: "512 B", 64 << 20: "64 MiB", 3 << 29: "1.5 GiB", 1 << 10: "1 KiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestCgroupV2Files drives the v2 code over a fake cgroup tree (this
// machine delegates no v2 memory controller, so the real one is tested
// through v1): which files are written, and how the counters are read.
func TestCgroupV2Files(t *testing.T) {
	own := t.TempDir()
	write := func(path, v string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(own, "cgroup.controllers"), "cpu memory pids\n")
	write(filepath.Join(own, "cgroup.subtree_control"), "")
	// The kernel creates a new group's files; the fake tree has them ready.
	name := fmt.Sprintf("sluice-%d", os.Getpid())
	if n := groupSeq.Load() + 1; n > 1 {
		name += fmt.Sprintf("-%d", n)
	}
	os.Mkdir(filepath.Join(own, name), 0o755)
	write(filepath.Join(own, name, "cgroup.subtree_control"), "")

	h, reason := detect(own)
	if h.mode != ModeV2 || h.dir != filepath.Join(own, name) {
		t.Fatalf("detect = %q at %q (%s), want v2 at %s", h.mode, h.dir, reason, name)
	}
	for _, f := range []string{filepath.Join(own, "cgroup.subtree_control"), filepath.Join(h.dir, "cgroup.subtree_control")} {
		if b, _ := os.ReadFile(f); string(b) != "+memory" {
			t.Errorf("%s = %q, want +memory", f, b)
		}
	}
	g, err := h.newGroup("worker-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"memory.max", "memory.swap.max"} {
		write(filepath.Join(g.dir, f), "") // cgroupfs replaces; a plain file must start empty
	}
	if err := g.setLimit(64 << 20); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(g.dir, "memory.max")); string(b) != "67108864" {
		t.Errorf("memory.max = %q, want 67108864", b)
	}
	if b, _ := os.ReadFile(filepath.Join(g.dir, "memory.swap.max")); string(b) != "0" {
		t.Errorf("memory.swap.max = %q, want 0", b)
	}
	write(filepath.Join(g.dir, "memory.peak"), "70000000\n")
	write(filepath.Join(g.dir, "memory.events"), "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
	if c := g.read(); c.peak != 70000000 || c.oomKill != 1 || !c.oomKnown {
		t.Errorf("read = %+v, want peak 70000000, oom_kill 1 known", c)
	}
}
