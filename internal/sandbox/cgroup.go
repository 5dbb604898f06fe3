package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Mode is how the kernel holds workers to their memory cap.
type Mode string

// The modes.
const (
	ModeV2   Mode = "v2"   // cgroup v2: memory.max, memory.peak, memory.events
	ModeV1   Mode = "v1"   // cgroup v1 memory controller: memory.limit_in_bytes, …
	ModeNone Mode = "none" // no writable memory cgroup: caps cannot be enforced
)

// hierarchy is Sluice's own group, under which each worker gets a child.
type hierarchy struct {
	mode Mode
	dir  string // e.g. /sys/fs/cgroup/memory/<own>/sluice-1234
}

// groupSeq numbers the Sluice groups of this process (several sandboxes in
// one test binary).
var groupSeq atomic.Int64

// detect finds where this process may create memory cgroups. root, when not
// empty, names the directory to create Sluice's group in instead of the
// process's own cgroup ("none" disables cgroups). It returns ModeNone with
// the reason when no cgroup is usable.
func detect(root string) (hierarchy, string) {
	name := fmt.Sprintf("sluice-%d", os.Getpid())
	if n := groupSeq.Add(1); n > 1 {
		name += "-" + strconv.FormatInt(n, 10)
	}
	if root == "none" {
		return hierarchy{mode: ModeNone}, "cgroups are disabled by configuration (sandbox.cgroup_root: none)"
	}
	if root != "" {
		switch {
		case exists(filepath.Join(root, "cgroup.controllers")):
			return setupV2(root, name)
		case exists(filepath.Join(root, "memory.limit_in_bytes")):
			return setupV1(root, name)
		}
		return hierarchy{mode: ModeNone}, fmt.Sprintf("%s is not a cgroup v2 directory nor a cgroup v1 memory directory", root)
	}
	v2, v1, err := ownCgroups()
	if err != nil {
		return hierarchy{mode: ModeNone}, err.Error()
	}
	var reasons []string
	if v2 != "" {
		h, why := setupV2(v2, name)
		if h.mode == ModeV2 {
			return h, ""
		}
		reasons = append(reasons, why)
	}
	if v1 != "" {
		h, why := setupV1(v1, name)
		if h.mode == ModeV1 {
			return h, ""
		}
		reasons = append(reasons, why)
	}
	if len(reasons) == 0 {
		reasons = append(reasons, "this process is in no cgroup v2 group and no cgroup v1 memory group")
	}
	return hierarchy{mode: ModeNone}, strings.Join(reasons, "; ")
}

// setupV2 creates Sluice's group in a cgroup v2 directory whose memory
// controller it may enable for its children.
func setupV2(own, name string) (hierarchy, string) {
	ctrls, err := os.ReadFile(filepath.Join(own, "cgroup.controllers"))
	if err != nil {
		return hierarchy{mode: ModeNone}, fmt.Sprintf("cgroup v2 %s: %v", own, err)
	}
	if !hasWord(string(ctrls), "memory") {
		return hierarchy{mode: ModeNone}, fmt.Sprintf("cgroup v2 %s: the memory controller is not delegated (controllers: %q)", own, strings.TrimSpace(string(ctrls)))
	}
	sub, _ := os.ReadFile(filepath.Join(own, "cgroup.subtree_control"))
	if !hasWord(string(sub), "memory") {
		// Fails with EBUSY while own holds processes (no internal processes):
		// the server must run in a leaf of a delegated group.
		if err := writeFile(filepath.Join(own, "cgroup.subtree_control"), "+memory"); err != nil {
			return hierarchy{mode: ModeNone}, fmt.Sprintf("cgroup v2 %s: cannot enable the memory controller for child groups: %v", own, err)
		}
	}
	dir := filepath.Join(own, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return hierarchy{mode: ModeNone}, fmt.Sprintf("cgroup v2: create %s: %v", dir, err)
	}
	if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+memory"); err != nil {
		_ = os.Remove(dir)
		return hierarchy{mode: ModeNone}, fmt.Sprintf("cgroup v2 %s: enable memory for worker groups: %v", dir, err)
	}
	cleanStale(own)
	return hierarchy{mode: ModeV2, dir: dir}, ""
}

// setupV1 creates Sluice's group in a cgroup v1 memory directory.
func setupV1(own, name string) (hierarchy, string) {
	dir := filepath.Join(own, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return hierarchy{mode: ModeNone}, fmt.Sprintf("cgroup v1 memory: create %s: %v", dir, err)
	}
	if !exists(filepath.Join(dir, "memory.limit_in_bytes")) {
		_ = os.Remove(dir)
		return hierarchy{mode: ModeNone}, fmt.Sprintf("cgroup v1 memory: %s has no memory.limit_in_bytes", dir)
	}
	cleanStale(own)
	return hierarchy{mode: ModeV1, dir: dir}, ""
}

// ownCgroups returns this process's cgroup v2 directory and cgroup v1
// memory directory, either "" when there is none.
func ownCgroups() (v2, v1 string, err error) {
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", "", fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	var v2Path, v1Path string
	hasV2, hasV1 := false, false
	for _, line := range strings.Split(string(cg), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2Path, hasV2 = parts[2], true
		case hasWordSep(parts[1], "memory", ','):
			v1Path, hasV1 = parts[2], true
		}
	}
	// mountinfo: id parent major:minor root mountpoint options … - fstype source superoptions
	for _, line := range strings.Split(string(mounts), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		mroot, point := unescape(f[3]), unescape(f[4])
		switch {
		case g[0] == "cgroup2" && hasV2 && v2 == "":
			if rel, ok := under(v2Path, mroot); ok {
				v2 = filepath.Join(point, rel)
			}
		case g[0] == "cgroup" && hasV1 && v1 == "" && hasWordSep(g[2], "memory", ','):
			if rel, ok := under(v1Path, mroot); ok {
				v1 = filepath.Join(point, rel)
			}
		}
	}
	return v2, v1, nil
}

// under returns path relative to a mount's root, if it lies under it.
func under(path, mroot string) (string, bool) {
	if mroot == "/" {
		return path, true
	}
	if path == mroot {
		return "/", true
	}
	if rest, ok := strings.CutPrefix(path, mroot+"/"); ok {
		return "/" + rest, true
	}
	return "", false
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cleanStale removes the empty groups left by Sluice processes that died
// (their workers died with them: they are killed when the server dies).
func cleanStale(own string) {
	entries, err := os.ReadDir(own)
	if err != nil {
		return
	}
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "sluice-")
		if !e.IsDir() || !ok {
			continue
		}
		pidText, _, _ := strings.Cut(name, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		dir := filepath.Join(own, e.Name())
		children, _ := os.ReadDir(dir)
		for _, c := range children {
			if c.IsDir() {
				_ = os.Remove(filepath.Join(dir, c.Name()))
			}
		}
		_ = os.Remove(dir)
	}
}

// close removes Sluice's group; its worker groups must be gone.
func (h hierarchy) close() error {
	if h.mode == ModeNone {
		return nil
	}
	return removeDir(h.dir)
}

// group is one worker's cgroup.
type group struct {
	mode Mode
	dir  string
}

// newGroup creates a worker group.
func (h hierarchy) newGroup(name string) (*group, error) {
	dir := filepath.Join(h.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	return &group{mode: h.mode, dir: dir}, nil
}

// fd opens the group's directory, for clone3's CLONE_INTO_CGROUP (v2).
func (g *group) fd() (int, error) {
	return syscall.Open(g.dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
}

// add moves a process into the group.
func (g *group) add(pid int) error {
	return writeFile(filepath.Join(g.dir, "cgroup.procs"), strconv.Itoa(pid))
}

// setLimit caps the group's memory at limit bytes, swap included, and
// restarts its peak and failure counters, so that they describe the run
// about to start.
func (g *group) setLimit(limit int64) error {
	v := strconv.FormatInt(limit, 10)
	switch g.mode {
	case ModeV2:
		if err := writeFile(filepath.Join(g.dir, "memory.max"), v); err != nil {
			return err
		}
		if p := filepath.Join(g.dir, "memory.swap.max"); exists(p) {
			if err := writeFile(p, "0"); err != nil {
				return err
			}
		}
		// memory.peak covers the group's life: the worker's start-up and
		// its one run (a reset would hold only for the writer's file).
	case ModeV1:
		if err := writeFile(filepath.Join(g.dir, "memory.limit_in_bytes"), v); err != nil {
			return err
		}
		if p := filepath.Join(g.dir, "memory.memsw.limit_in_bytes"); exists(p) {
			if err := writeFile(p, v); err != nil {
				return err
			}
		}
		_ = writeFile(filepath.Join(g.dir, "memory.max_usage_in_bytes"), "0")
		_ = writeFile(filepath.Join(g.dir, "memory.failcnt"), "0")
	}
	return nil
}

// counters is what the group saw.
type counters struct {
	peak    int64 // bytes
	oomKill int64 // processes the OOM killer killed in the group
	// oomKnown reports that the kernel counts OOM kills (v2, and v1 since
	// Linux 4.13); otherwise failcnt is the hint.
	oomKnown bool
	failcnt  int64 // v1: times usage hit the limit
}

// read reads the group's counters.
func (g *group) read() counters {
	var c counters
	switch g.mode {
	case ModeV2:
		c.peak = readInt(filepath.Join(g.dir, "memory.peak"))
		if v, ok := readKey(filepath.Join(g.dir, "memory.events"), "oom_kill"); ok {
			c.oomKill, c.oomKnown = v, true
		}
	case ModeV1:
		c.peak = readInt(filepath.Join(g.dir, "memory.max_usage_in_bytes"))
		if v, ok := readKey(filepath.Join(g.dir, "memory.oom_control"), "oom_kill"); ok {
			c.oomKill, c.oomKnown = v, true
		}
		c.failcnt = readInt(filepath.Join(g.dir, "memory.failcnt"))
	}
	return c
}

// killAll kills every process left in the group.
func (g *group) killAll() {
	if g.mode == ModeV2 && writeFile(filepath.Join(g.dir, "cgroup.kill"), "1") == nil {
		return
	}
	b, err := os.ReadFile(filepath.Join(g.dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// remove deletes the group once its processes are gone.
func (g *group) remove() error {
	return removeDir(g.dir)
}

// removeDir removes a cgroup directory, waiting briefly for the kernel to
// finish with the processes that just left it.
func removeDir(dir string) error {
	var err error
	for i := 0; i < 200; i++ {
		err = os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(time.Duration(min(i+1, 20)) * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func writeFile(path, v string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s to %s: %w", v, path, err)
	}
	return nil
}

func readInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// readKey reads "key value" from a flat-keyed file (memory.events,
// memory.oom_control).
func readKey(path, key string) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

func hasWordSep(s, w string, sep byte) bool {
	for _, f := range strings.Split(s, string(sep)) {
		if f == w {
			return true
		}
	}
	return false
}
