package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// target is one server under test: its chat completions URL and the
// process whose CPU time is charged to it.
type target struct {
	name, url string
	pid       int
}

// targets is a repeatable -target NAME,URL,PID flag.
type targets []target

func (t *targets) String() string { return fmt.Sprint(*t) }

func (t *targets) Set(v string) error {
	parts := strings.Split(v, ",")
	if len(parts) != 3 {
		return errors.New("want NAME,URL,PID")
	}
	pid, err := strconv.Atoi(parts[2])
	if err != nil {
		return fmt.Errorf("pid %q: %w", parts[2], err)
	}
	*t = append(*t, target{name: parts[0], url: parts[1], pid: pid})
	return nil
}

// figures is what was measured of one target over all rounds.
type figures struct {
	seq      []time.Duration // one connection, one request after another
	seqTicks int64           // the server's CPU ticks over the sequential requests
	upTicks1 int64           // the upstream's, same requests

	conc      []time.Duration // at -conns connections
	concN     int
	concTime  time.Duration
	concTicks int64
	upTicks32 int64

	failed   int
	statuses map[int]int
}

// loadConfig is the load phase's settings.
type loadConfig struct {
	key, body   string
	n, warmup   int
	conns       int
	duration    time.Duration
	rounds      int
	clkTck      int
	upstreamPID int
}

// load measures every target in rounds that take turns (target A, B, C,
// then A, B, C again), so that a slow spell of the shared machine falls
// on all of them rather than on whichever ran then.
func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var ts targets
	fs.Var(&ts, "target", "NAME,URL,PID: a server under test (repeat; the first is the baseline)")
	var c loadConfig
	fs.StringVar(&c.key, "key", "", "sent as Authorization: Bearer to every target")
	model := fs.String("model", "gpt-4o-mini", "the model asked for")
	fs.IntVar(&c.n, "n", 3000, "sequential requests per target at 1 connection (over all rounds)")
	fs.IntVar(&c.warmup, "warmup", 500, "sequential requests per target before measuring (plus 1 s at -conns)")
	fs.IntVar(&c.conns, "conns", 32, "connections of the throughput phase")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "throughput phase per target (over all rounds)")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds the phases are split into")
	fs.IntVar(&c.clkTck, "clk-tck", 100, "clock ticks per second of /proc/PID/stat (getconf CLK_TCK)")
	fs.IntVar(&c.upstreamPID, "upstream-pid", 0, "the upstream's pid: its CPU per request is shown too")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(ts) == 0 || c.rounds < 1 || c.n < c.rounds || c.conns < 1 {
		return errors.New("need at least one -target, -rounds ≥ 1, -n ≥ -rounds and -conns ≥ 1")
	}
	c.body = `{"model":"` + *model + `","messages":[{"role":"system","content":"You are a helpful assistant."},` +
		`{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64}`

	res := make([]*figures, len(ts))
	one := make([]*http.Client, len(ts))
	many := make([]*http.Client, len(ts))
	for i, t := range ts {
		res[i] = &figures{statuses: map[int]int{}}
		one[i] = newClient(1)
		many[i] = newClient(c.conns)
		fmt.Fprintf(os.Stderr, "warm-up %s\n", t.name)
		if _, err := c.do(one[i], t.url); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		c.concurrent(many[i], t.url, time.Second, &figures{statuses: map[int]int{}})
		for range c.warmup {
			_, _ = c.do(one[i], t.url)
		}
	}
	self := os.Getpid()
	selfTicks := int64(0)
	for round := range c.rounds {
		for i, t := range ts {
			fmt.Fprintf(os.Stderr, "round %d/%d: %s\n", round+1, c.rounds, t.name)
			f := res[i]
			n := c.n / c.rounds
			s0, u0 := ticks(t.pid), ticks(c.upstreamPID)
			for range n {
				start := time.Now()
				status, err := c.do(one[i], t.url)
				f.seq = append(f.seq, time.Since(start))
				f.count(status, err)
			}
			f.seqTicks += ticks(t.pid) - s0
			f.upTicks1 += ticks(c.upstreamPID) - u0

			s0, u0, l0 := ticks(t.pid), ticks(c.upstreamPID), ticks(self)
			start := time.Now()
			c.concurrent(many[i], t.url, c.duration/time.Duration(c.rounds), f)
			f.concTime += time.Since(start)
			f.concTicks += ticks(t.pid) - s0
			f.upTicks32 += ticks(c.upstreamPID) - u0
			selfTicks += ticks(self) - l0
		}
	}
	c.report(os.Stdout, ts, res, selfTicks)
	return nil
}

func newClient(conns int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxConnsPerHost = conns
	t.MaxIdleConnsPerHost = conns
	t.DisableCompression = true
	return &http.Client{Transport: t, Timeout: 30 * time.Second}
}

// do makes one chat completion request and reads the whole answer.
func (c *loadConfig) do(cl *http.Client, url string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(c.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := cl.Do(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.StatusCode, err
}

// concurrent keeps c.conns requests in flight for d and adds what it saw
// to f.
func (c *loadConfig) concurrent(cl *http.Client, url string, d time.Duration, f *figures) {
	deadline := time.Now().Add(d)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range c.conns {
		wg.Go(func() {
			local := &figures{statuses: map[int]int{}}
			for time.Now().Before(deadline) {
				start := time.Now()
				status, err := c.do(cl, url)
				local.conc = append(local.conc, time.Since(start))
				local.count(status, err)
			}
			mu.Lock()
			f.conc = append(f.conc, local.conc...)
			f.concN += len(local.conc)
			f.failed += local.failed
			for s, n := range local.statuses {
				f.statuses[s] += n
			}
			mu.Unlock()
		})
	}
	wg.Wait()
}

func (f *figures) count(status int, err error) {
	f.statuses[status]++
	if err != nil {
		f.failed++
	}
}

// ticks is the user plus system CPU time of process pid so far, in clock
// ticks (fields 14 and 15 of /proc/PID/stat); 0 for pid 0.
func ticks(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count from after it.
	i := bytes.LastIndexByte(b, ')')
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(fields[11], 10, 64)
	s, _ := strconv.ParseInt(fields[12], 10, 64)
	return u + s
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(int(p*float64(len(s))), len(s)-1)]
}

func ms(d time.Duration) string { return strconv.FormatFloat(d.Seconds()*1000, 'f', 3, 64) }

// usPer is CPU microseconds per request.
func (c *loadConfig) usPer(ticks int64, n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(ticks)*1e6/float64(c.clkTck)/float64(n), 'f', 0, 64)
}

// report prints the table, in Markdown, and the added latency of every
// target against the first.
func (c *loadConfig) report(w io.Writer, ts []target, res []*figures, selfTicks int64) {
	fmt.Fprintf(w, "\n%d sequential requests per target at 1 connection, %v at %d connections, in %d rounds\n\n",
		c.n/c.rounds*c.rounds, c.duration.Round(time.Millisecond), c.conns, c.rounds)
	fmt.Fprintln(w, "| target | p50 ms (1 conn) | p99 ms (1 conn) | req/s (32 conns) | p50 / p99 ms (32 conns) | server CPU µs/req (1 conn) | server CPU µs/req (32 conns) | upstream CPU µs/req (32 conns) | failed |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for i, t := range ts {
		f := res[i]
		rps := float64(f.concN) / f.concTime.Seconds()
		fmt.Fprintf(w, "| %s | %s | %s | %.0f | %s / %s | %s | %s | %s | %d |\n", t.name,
			ms(percentile(f.seq, .50)), ms(percentile(f.seq, .99)), rps,
			ms(percentile(f.conc, .50)), ms(percentile(f.conc, .99)),
			c.usPer(f.seqTicks, len(f.seq)), c.usPer(f.concTicks, f.concN), c.usPer(f.upTicks32, f.concN), f.failed)
	}
	fmt.Fprintln(w)
	base := res[0]
	for i, t := range ts[1:] {
		f := res[i+1]
		fmt.Fprintf(w, "added vs %s, %s: p50 %+.3f ms, p99 %+.3f ms at 1 connection\n", ts[0].name, t.name,
			(percentile(f.seq, .50)-percentile(base.seq, .50)).Seconds()*1000,
			(percentile(f.seq, .99)-percentile(base.seq, .99)).Seconds()*1000)
	}
	total := 0
	for _, f := range res {
		total += f.concN
	}
	fmt.Fprintf(w, "load generator CPU: %s µs/req at %d connections\n", c.usPer(selfTicks, total), c.conns)
	for i, t := range ts {
		if len(res[i].statuses) > 1 || res[i].failed > 0 {
			fmt.Fprintf(w, "%s answered: %v (status 0: no answer)\n", t.name, res[i].statuses)
		}
	}
}
