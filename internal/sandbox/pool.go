package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// startTimeout bounds how long a new worker may take to say it is ready.
const startTimeout = 10 * time.Second

// proc is one worker process, used for one run.
type proc struct {
	cmd *exec.Cmd
	pid int
	cg  *group    // nil without cgroups
	c   *conn     // the worker's stdout, and its stdin to write to
	in  io.Closer // the worker's stdin
	out io.Closer // the worker's stdout

	frames  chan frame // from the reader goroutine, closed when stdout ends
	readErr error      // why stdout ended; read after frames is closed
	readers sync.WaitGroup

	waited  chan struct{}
	state   *os.ProcessState
	waitErr error

	removeOnce sync.Once
	removeErr  error
}

// spawner starts workers.
type spawner struct {
	command []string
	env     []string
	stderr  io.Writer
	h       hierarchy
	seq     atomic.Int64
}

// start starts a worker in its own process group and cgroup and waits for
// its ready frame.
func (s *spawner) start(ctx context.Context) (*proc, error) {
	p := &proc{frames: make(chan frame, 16), waited: make(chan struct{})}
	if s.h.mode != ModeNone {
		g, err := s.h.newGroup("worker-" + strconv.FormatInt(s.seq.Add(1), 10))
		if err != nil {
			return nil, err
		}
		p.cg = g
	}
	cmd := exec.Command(s.command[0], s.command[1:]...)
	cmd.Env = s.env
	cmd.Stderr = s.stderr
	// Its own process group, so that a kill takes whatever it started; and
	// it dies with the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	if p.cg != nil && p.cg.mode == ModeV2 {
		// Born in its group: no moment outside the cap.
		fd, err := p.cg.fd()
		if err != nil {
			_ = p.cg.remove()
			return nil, fmt.Errorf("open cgroup %s: %w", p.cg.dir, err)
		}
		defer syscall.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	// Pipes of our own, not StdinPipe/StdoutPipe: exec.Cmd.Wait closes
	// those when the process exits, which could drop a result not yet read.
	inR, inW, err := os.Pipe()
	if err != nil {
		p.cleanupGroup()
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		p.cleanupGroup()
		return nil, err
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		p.cleanupGroup()
		return nil, fmt.Errorf("start worker %q: %w", s.command[0], err)
	}
	p.cmd, p.pid, p.in, p.out = cmd, cmd.Process.Pid, inW, outR
	p.c = newConn(outR, inW, maxFrame)
	go func() {
		p.state, p.waitErr = waitProc(cmd)
		close(p.waited)
	}()
	p.readers.Add(1)
	go p.read()
	if p.cg != nil && p.cg.mode == ModeV1 {
		// The worker is still starting its runtime; from here on, what it
		// allocates is charged to its group.
		if err := p.cg.add(p.pid); err != nil {
			_ = p.retire()
			return nil, err
		}
	}
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case f, ok := <-p.frames:
		// The pid in the frame may differ from ours when a wrapper command
		// forks the worker; the process group and cgroup hold both.
		if ok && f.Type == frameReady {
			return p, nil
		}
		err = fmt.Errorf("worker %d did not start: %s", p.pid, p.exitText())
	case <-timer.C:
		err = fmt.Errorf("worker %d did not say it was ready within %s", p.pid, startTimeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	_ = p.retire()
	return nil, err
}

// waitProc waits for the command, which exec.Cmd does only once.
func waitProc(cmd *exec.Cmd) (*os.ProcessState, error) {
	err := cmd.Wait()
	return cmd.ProcessState, err
}

// read forwards frames until the worker's stdout ends.
func (p *proc) read() {
	defer p.readers.Done()
	defer close(p.frames)
	for {
		f, err := p.c.recv()
		if err != nil {
			p.readErr = err
			return
		}
		p.frames <- f
	}
}

// alive reports whether the worker has not exited.
func (p *proc) alive() bool {
	select {
	case <-p.waited:
		return false
	default:
		return true
	}
}

// kill kills the worker's process group (and, with cgroups, whatever else
// is in its group). Once the worker is reaped its pid may be reused, so its
// group is killed only before.
func (p *proc) kill() {
	if p.alive() {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	if p.cg != nil {
		p.cg.killAll()
	}
}

// wait waits for the worker to exit.
func (p *proc) wait() {
	<-p.waited
}

// exitText says how the worker ended, once it has.
func (p *proc) exitText() string {
	select {
	case <-p.waited:
	case <-time.After(time.Second):
		return "still running"
	}
	if p.state == nil {
		return fmt.Sprintf("%v", p.waitErr)
	}
	return p.state.String()
}

// signaled reports whether the worker died of sig.
func (p *proc) signaled(sig syscall.Signal) bool {
	if p.state == nil {
		return false
	}
	ws, ok := p.state.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// rusage returns the worker's CPU time and maximum resident set size.
func (p *proc) rusage() (cpu time.Duration, maxRSS int64) {
	if p.state == nil {
		return 0, 0
	}
	ru, ok := p.state.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, 0
	}
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpu, ru.Maxrss << 10 // KiB on Linux
}

// retire kills the worker, waits for it and its reader, and removes its
// group. It is safe to call more than once.
func (p *proc) retire() error {
	p.kill()
	p.wait()
	_ = p.in.Close()
	_ = p.out.Close() // a reader still blocked (a grandchild holding the pipe) returns
	for range p.frames {
		// what the worker sent after the run ended, or while idle
	}
	p.readers.Wait()
	return p.cleanupGroup()
}

// cleanupGroup removes the worker's cgroup, once.
func (p *proc) cleanupGroup() error {
	if p.cg == nil {
		return nil
	}
	p.removeOnce.Do(func() { p.removeErr = p.cg.remove() })
	return p.removeErr
}

// pool keeps up to size started workers ready. Each is used for one run
// and replaced in the background: when the run ends, so that starting the
// replacement does not compete with the run for the CPU, or at once when
// the pool has run dry.
type pool struct {
	sp   *spawner
	size int
	log  func(msg string, err error)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	idle     []*proc
	starting int
	closed   bool
	lastErr  error         // the last start's error, nil after a success
	changed  chan struct{} // closed when a start ends
}

func newPool(sp *spawner, size int, log func(string, error)) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pool{sp: sp, size: size, log: log, ctx: ctx, cancel: cancel, changed: make(chan struct{})}
	p.fill()
	return p
}

// fill starts workers in the background until size are idle or starting
// (the workers in use not counted).
func (p *pool) fill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.closed && len(p.idle)+p.starting < p.size {
		p.starting++
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			w, err := p.sp.start(p.ctx)
			p.mu.Lock()
			p.starting--
			p.lastErr = err
			if err == nil && !p.closed {
				p.idle = append(p.idle, w)
				w = nil
			}
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
			if err != nil && p.ctx.Err() == nil {
				p.log("starting a sandbox worker failed", err)
			}
			if w != nil {
				_ = w.retire()
			}
		}()
	}
}

// get returns a ready worker: an idle one, else the next one to finish
// starting, else a new one.
func (p *pool) get(ctx context.Context) (*proc, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("the sandbox is closed")
		}
		var w *proc
		if n := len(p.idle); n > 0 {
			w = p.idle[n-1]
			p.idle = p.idle[:n-1]
		}
		dry, starting, changed := len(p.idle) == 0, p.starting, p.changed
		p.mu.Unlock()
		if w == nil && starting == 0 {
			break
		}
		if w == nil {
			// One is on its way, and sooner than one started now would be.
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if dry {
			p.fill()
		}
		if w.alive() {
			return w, nil
		}
		_ = w.retire() // died while idle
	}
	p.fill()
	return p.sp.start(ctx)
}

// health is the last start's error.
func (p *pool) health() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) > 0 {
		return nil
	}
	return p.lastErr
}

// close stops refilling and retires the idle workers.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	for _, w := range idle {
		_ = w.retire()
	}
}
