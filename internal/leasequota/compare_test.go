package leasequota_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/leasequota"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/quota/quotatest"
	"github.com/sluicehq/sluice/internal/redisquota"
)

// TestCompareEngines is the engine comparison of issue 10, in one run
// against the package's one redis-server on loopback (docs/performance.md,
// "Shared engine comparison"):
//
//  1. redis-benchmark against that server: trivial EVALSHA (`return 1`),
//     PING and SET, the floor of what a script call costs;
//  2. today's engine, redisquota.Backend, acquire+settle pairs on the
//     6-scope quotatest.BenchChains(64), limits far away, 2 and 16
//     goroutines;
//  3. the lease engine, 1 and 3 instances (Engines with distinct names on
//     the one store), same chains and asks, 2 and 16 goroutines in all;
//  4. near a limit: a per-user request rate far below demand, and a per-user
//     tokens/day budget that runs out half way through the run, for both
//     engines.
//
// Each case runs for SLUICE_COMPARE_SECONDS (5) after a warm-up of a
// second, and reports admitted pairs/s, denials/s, and the Redis CPU
// (INFO cpu: used_cpu_sys + used_cpu_user) and calls (INFO commandstats,
// INFO excluded) between the two ends of the measured span, per admitted
// pair and per decision (acquire attempt). The table goes to stdout.
//
// It asserts correctness only: no error but denials, admissions happened,
// and the near-limit cases did not admit beyond their limits. Never speed.
//
//	SLUICE_COMPARE=1 go test -run TestCompareEngines -count=1 -v ./internal/leasequota/
func TestCompareEngines(t *testing.T) {
	if os.Getenv("SLUICE_COMPARE") == "" {
		t.Skip("set SLUICE_COMPARE=1 to run the engine comparison (about 90 s; docs/performance.md, Shared engine comparison)")
	}
	dur := 5 * time.Second
	if s := os.Getenv("SLUICE_COMPARE_SECONDS"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f <= 0 {
			t.Fatalf("SLUICE_COMPARE_SECONDS=%q: want a positive number of seconds", s)
		}
		dur = time.Duration(f * float64(time.Second))
	}
	const warm = time.Second

	stats := newClient(t) // INFO only, off the workload's pool
	ctx := context.Background()
	_, port, err := net.SplitHostPort(server.addr)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := stats.Info(ctx, "server").Result()
	cmp := &comparison{t: t, stats: stats, dur: dur, warm: warm}
	fmt.Printf("\n# Engine comparison: %s per case after %s warm-up; %s, %d CPUs, redis-server %s on 127.0.0.1:%s\n\n",
		dur, warm, runtime.Version(), runtime.NumCPU(), infoField(info, "redis_version"), port)

	// 0. What an idle server costs over the same span (serverCron, INFO).
	cmp.idle()

	// 1. redis-benchmark: the floor of one script call.
	cmp.redisBenchmark(port)

	// 2.–4. The engines.
	far := cutChains(nil)
	const users = 64
	var qFar16, lFar16 float64
	for _, g := range []int{2, 16} {
		r := cmp.run(caseSpec{regime: "far", engine: "redisquota", instances: 1, goroutines: g, chains: far})
		if g == 16 {
			qFar16 = r.pairsPerSec()
		}
	}
	for _, n := range []int{1, 3} {
		for _, g := range []int{2, 16} {
			r := cmp.run(caseSpec{regime: "far", engine: "lease", instances: n, goroutines: g, chains: far})
			if n == 1 && g == 16 {
				lFar16 = r.pairsPerSec()
			}
		}
	}

	// Near a limit, by rate: each user (its own scope; the membership is
	// left far) admits 20 requests/s with a burst of 20, against 16
	// goroutines asking as fast as they can.
	userRate := quota.Rate{Limit: 20, Period: time.Second}
	rateChains := cutChains(func(level int, l *quota.Limits) {
		if level == 4 {
			l.Requests = userRate
		}
	})
	rateCheck := func(r *result) {
		// GCRA: any span of length T admits at most Burst + Limit·T.
		bound := userRate.Limit + int64(float64(userRate.Limit)*r.wall.Seconds()) + 1
		for u := range r.perUser {
			if n := r.perUser[u].Load(); n > bound {
				t.Errorf("%s: user %d admitted %d requests in %s, above the rate's bound %d", r.name(), u, n, r.wall.Round(time.Millisecond), bound)
			}
		}
	}
	r := cmp.run(caseSpec{regime: "near: rate 20/s/user", engine: "redisquota", instances: 1, goroutines: 16, chains: rateChains})
	rateCheck(r)
	for _, n := range []int{1, 3} {
		r := cmp.run(caseSpec{regime: "near: rate 20/s/user", engine: "lease", instances: n, goroutines: 16, chains: rateChains})
		rateCheck(r)
	}

	// Near a limit, by budget: each user's tokens/day is sized so that the
	// engine's own far-limit rate (16 goroutines) would spend it a quarter
	// of the way through the measured span (measured from the first
	// decision: no warm-up), so that a run at half that rate still spends
	// it; from then on every decision is denied.
	for _, e := range []struct {
		engine string
		rate   float64
	}{{"redisquota", qFar16}, {"lease", lFar16}} {
		const use = 300 // compareUse's tokens, charged at settle
		perUser := max(int64(e.rate*(dur/4).Seconds()/users), 50)
		budget := perUser * use
		chains := cutChains(func(level int, l *quota.Limits) {
			if level == 4 {
				l.TokensDay = quota.AtMost(budget)
			}
		})
		days := dayStarts()
		r := cmp.run(caseSpec{regime: fmt.Sprintf("near: %d tokens/day/user", budget), engine: e.engine, instances: 1, goroutines: 16, chains: chains, noWarm: true})
		if dayStarts() != days {
			t.Logf("%s: a day window ended during the case; the budget check is skipped", r.name())
			continue
		}
		for u := range r.perUser {
			if n := r.perUser[u].Load(); n*use > budget {
				t.Errorf("%s: user %d admitted %d pairs (%d tokens settled), above its budget of %d", r.name(), u, n, n*use, budget)
			}
		}
	}

	cmp.print()
}

var (
	compareAsk = quota.Ask{Requests: 1, Tokens: 500, GPUMillis: 10, CostMicros: 20, Concurrency: true, Model: "llama3"}
	compareUse = quota.Usage{InputTokens: 200, OutputTokens: 100, GPUMillis: 5, CostMicros: 10}
)

// cutChains returns quotatest.BenchChains(64) with the rates cut as in
// BenchmarkEngineAcquireSettle (the store's rate arithmetic is exact below
// 2^53: 1e6 requests/s, 9e7 tokens/s, still far), one Limits per level of
// the chain (0 global … 4 user, 5 membership), which mod may change.
func cutChains(mod func(level int, l *quota.Limits)) [][]quota.Scope {
	chains := quotatest.BenchChains(64)
	type key struct {
		l     *quota.Limits
		level int
	}
	cut := map[key]*quota.Limits{}
	for _, c := range chains {
		for i := range c {
			k := key{c[i].Limits, i}
			l := cut[k]
			if l == nil {
				cp := *c[i].Limits
				cp.Requests = quota.Rate{Limit: 1_000_000, Period: time.Second}
				cp.TokensRate = quota.Rate{Limit: 90_000_000, Period: time.Second}
				if mod != nil {
					mod(i, &cp)
				}
				l, cut[k] = &cp, &cp
			}
			c[i].Limits = l
		}
	}
	return chains
}

// dayStarts names the current day in the chains' two time zones.
func dayStarts() string {
	sh, _ := time.LoadLocation("Asia/Shanghai")
	now := time.Now()
	return now.UTC().Format(time.DateOnly) + "/" + now.In(sh).Format(time.DateOnly)
}

type caseSpec struct {
	regime     string
	engine     string // "redisquota" or "lease"
	instances  int
	goroutines int
	chains     [][]quota.Scope
	noWarm     bool // measure from the first decision (a budget spent by the run)
}

type result struct {
	caseSpec
	label      string // overrides the engine column (redis-benchmark)
	unit       string // "pairs/s" or "calls/s"
	elapsed    time.Duration
	wall       time.Duration // from the first decision to the last, warm-up included
	admitted   int64
	denied     int64
	errs       int64
	cpu        float64 // Redis CPU seconds
	calls      int64   // commands the clients sent (-1: no Redis figures)
	cmds       int64   // commands Redis ran, scripts' included, INFO excluded
	scripts    int64   // script calls (EVALSHA, EVAL)
	scriptUsec int64   // Redis time in scripts, µs
	top        string
	perUser    []atomic.Int64
}

func (r *result) name() string {
	return fmt.Sprintf("%s %s %d×%d", r.regime, r.engine, r.instances, r.goroutines)
}

func (r *result) pairsPerSec() float64 { return float64(r.admitted) / r.elapsed.Seconds() }

type comparison struct {
	t     *testing.T
	stats *redis.Client
	dur   time.Duration
	warm  time.Duration
	rows  []*result
}

// redisStats is what INFO says about the server's CPU and commands.
type redisStats struct {
	cpu   float64
	calls map[string]int64
	usec  map[string]int64
}

func (c *comparison) snapshot() redisStats {
	c.t.Helper()
	s, err := c.stats.Info(context.Background(), "cpu", "commandstats").Result()
	if err != nil {
		c.t.Fatalf("INFO: %v", err)
	}
	st := redisStats{calls: map[string]int64{}, usec: map[string]int64{}}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case k == "used_cpu_sys" || k == "used_cpu_user":
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				c.t.Fatalf("INFO cpu %s: %v", line, err)
			}
			st.cpu += f
		case strings.HasPrefix(k, "cmdstat_"):
			cmd := strings.TrimPrefix(k, "cmdstat_")
			for _, f := range strings.Split(v, ",") {
				fk, fv, _ := strings.Cut(f, "=")
				n, _ := strconv.ParseInt(fv, 10, 64)
				switch fk {
				case "calls":
					st.calls[cmd] = n
				case "usec":
					st.usec[cmd] = n
				}
			}
		}
	}
	return st
}

// scriptCmds are the top-level script calls in INFO commandstats. The
// commands a script runs are counted there too (set, hget, …), so the
// round trips are counted on the clients (roundTrips) and commandstats
// gives the scripts' count and time.
var scriptCmds = map[string]bool{"eval": true, "evalsha": true, "eval_ro": true, "evalsha_ro": true, "fcall": true, "fcall_ro": true}

// diff fills r's Redis figures from two snapshots.
func diff(r *result, a, b redisStats) {
	r.cpu = b.cpu - a.cpu
	type kv struct {
		cmd string
		n   int64
	}
	var cmds []kv
	for cmd, n := range b.calls {
		if cmd == "info" {
			continue
		}
		d := n - a.calls[cmd]
		r.cmds += d
		if scriptCmds[cmd] {
			r.scripts += d
			r.scriptUsec += b.usec[cmd] - a.usec[cmd]
		}
		if d > 0 {
			cmds = append(cmds, kv{cmd, d})
		}
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].n > cmds[j].n })
	var top []string
	for i, c := range cmds {
		if i == 4 {
			break
		}
		top = append(top, fmt.Sprintf("%s %d", c.cmd, c.n))
	}
	r.top = strings.Join(top, ", ")
}

// roundTrips counts the commands a client sends (each pipelined command
// once, as redis-benchmark's -P would).
type roundTrips struct{ n atomic.Int64 }

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// idle measures the server doing nothing but answering the INFO calls.
func (c *comparison) idle() {
	r := &result{caseSpec: caseSpec{regime: "idle server"}, label: "(nothing)", unit: "-"}
	a := c.snapshot()
	start := time.Now()
	time.Sleep(c.dur)
	b := c.snapshot()
	r.elapsed = time.Since(start)
	diff(r, a, b)
	c.rows = append(c.rows, r)
}

var benchLine = regexp.MustCompile(`^(.+?): ([0-9.]+) requests per second`)

// redisBenchmark runs redis-benchmark against the server: EVALSHA of a
// `return 1` script (its Redis CPU and calls measured like the engines'),
// then PING and SET for reference, each sized to about the case duration
// from a short calibration run.
func (c *comparison) redisBenchmark(port string) {
	t := c.t
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		t.Errorf("redis-benchmark is not on PATH (apt-get install redis-tools): %v", err)
		return
	}
	sha, err := c.stats.ScriptLoad(context.Background(), "return 1").Result()
	if err != nil {
		t.Fatalf("SCRIPT LOAD: %v", err)
	}
	bench := func(n int, args ...string) map[string]float64 {
		full := append([]string{"-h", "127.0.0.1", "-p", port, "-n", strconv.Itoa(n), "-c", "8", "-q"}, args...)
		out, err := exec.Command("redis-benchmark", full...).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-benchmark %s: %v\n%s", strings.Join(full, " "), err, out)
		}
		rps := map[string]float64{}
		sc := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(string(out), "\r", "\n")))
		for sc.Scan() {
			if m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text())); m != nil {
				rps[m[1]], _ = strconv.ParseFloat(m[2], 64)
			}
		}
		if len(rps) == 0 {
			t.Fatalf("redis-benchmark %s: no requests per second in\n%s", strings.Join(full, " "), out)
		}
		return rps
	}
	one := func(m map[string]float64) float64 {
		for _, v := range m {
			return v
		}
		return 0
	}
	cal := one(bench(20_000, "EVALSHA", sha, "0"))
	n := max(int(cal*c.dur.Seconds()), 20_000)
	r := &result{caseSpec: caseSpec{regime: "floor", instances: 1, goroutines: 8}, label: "redis-benchmark EVALSHA `return 1`", unit: "calls/s"}
	a := c.snapshot()
	start := time.Now()
	rps := one(bench(n, "EVALSHA", sha, "0"))
	b := c.snapshot()
	r.elapsed = time.Since(start)
	diff(r, a, b)
	r.calls = r.cmds // every command came from the clients
	// Its own figure, not our clock (which includes its start-up).
	r.admitted = int64(rps * r.elapsed.Seconds())
	c.rows = append(c.rows, r)

	ref := bench(max(n/2, 20_000), "-t", "ping,set")
	var names []string
	for k := range ref {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		c.rows = append(c.rows, &result{caseSpec: caseSpec{regime: "floor", instances: 1, goroutines: 8},
			label: "redis-benchmark " + k, unit: "calls/s", elapsed: time.Second, admitted: int64(ref[k]), calls: -1})
	}
}

// run measures one case: engines built on fresh keys, goroutines doing
// acquire+settle pairs on random users until the end of the measured span.
func (c *comparison) run(s caseSpec) *result {
	t := c.t
	t.Helper()
	r := &result{caseSpec: s, unit: "pairs/s", perUser: make([]atomic.Int64, len(s.chains))}
	client, rt := newClient(t), &roundTrips{}
	client.AddHook(rt)
	var backends []quota.Backend
	switch s.engine {
	case "redisquota":
		be, err := redisquota.New(client, redisquota.Options{
			Prefix:  "cmpq" + strconv.FormatInt(prefixSeq.Add(1), 10),
			Timeout: time.Second,
		})
		if err != nil {
			t.Fatalf("redisquota.New: %v", err)
		}
		backends = append(backends, be)
	case "lease":
		st := newStore(t, client, nil, leasequota.Options{Timeout: time.Second})
		n := s.instances
		for i := range n {
			e, err := leasequota.NewEngine(st, leasequota.EngineOptions{
				Instance:  fmt.Sprintf("cmp-%d", i+1),
				Instances: func() int { return n },
			})
			if err != nil {
				t.Fatalf("NewEngine: %v", err)
			}
			backends = append(backends, e)
		}
	default:
		t.Fatalf("unknown engine %q", s.engine)
	}

	var (
		stop             atomic.Bool
		admitted, denied atomic.Int64
		errCount         atomic.Int64
		errMu            sync.Mutex
		firstErrs        []string
		wg               sync.WaitGroup
		seed             atomic.Uint64
		ctx              = context.Background()
		chains           = s.chains
		nb               = uint64(len(backends))
		nu               = uint64(len(chains))
	)
	fail := func(what string, err error) {
		if errCount.Add(1) <= 3 {
			errMu.Lock()
			firstErrs = append(firstErrs, what+": "+err.Error())
			errMu.Unlock()
		}
	}
	begin := time.Now()
	for g := range s.goroutines {
		wg.Go(func() {
			x := 88172645463325252 + seed.Add(1)*0x9E3779B97F4A7C15
			for k := uint64(g); !stop.Load(); k++ {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				u := x % nu
				be := backends[k%nb] // every instance serves every goroutine
				tk, err := be.Acquire(ctx, quota.Request{Chain: chains[u], Ask: compareAsk})
				if err != nil {
					if _, ok := errors.AsType[*quota.Denial](err); ok {
						denied.Add(1)
					} else {
						fail("acquire", err)
						time.Sleep(time.Millisecond) // keep a broken engine from spinning
					}
					continue
				}
				if _, err := be.Settle(ctx, tk.ID, compareUse); err != nil {
					fail("settle", err)
					continue
				}
				r.perUser[u].Add(1)
				admitted.Add(1)
			}
		})
	}
	if !s.noWarm {
		time.Sleep(c.warm)
	}
	a := c.snapshot()
	a0, d0, n0 := admitted.Load(), denied.Load(), rt.n.Load()
	start := time.Now()
	time.Sleep(c.dur)
	a1, d1, n1 := admitted.Load(), denied.Load(), rt.n.Load()
	r.elapsed = time.Since(start)
	b := c.snapshot()
	stop.Store(true)
	wg.Wait()
	r.wall = time.Since(begin)
	for _, be := range backends {
		if err := be.Close(); err != nil {
			t.Errorf("%s: Close: %v", r.name(), err)
		}
	}
	diff(r, a, b)
	r.admitted, r.denied, r.errs, r.calls = a1-a0, d1-d0, errCount.Load(), n1-n0
	c.rows = append(c.rows, r)

	if r.errs > 0 {
		t.Errorf("%s: %d errors other than denials, first: %s", r.name(), r.errs, strings.Join(firstErrs, "; "))
	}
	if r.admitted == 0 {
		t.Errorf("%s: nothing admitted in %s", r.name(), c.dur)
	}
	t.Logf("%s: %.0f pairs/s, %.0f denials/s, %.2f µs Redis CPU and %.3f round trips per pair",
		r.name(), r.pairsPerSec(), float64(r.denied)/r.elapsed.Seconds(), r.cpu*1e6/float64(max(r.admitted, 1)), float64(r.calls)/float64(max(r.admitted, 1)))
	return r
}

// print writes the Markdown table to stdout.
func (c *comparison) print() {
	var b strings.Builder
	b.WriteString("| regime | engine | inst. | gor. | admitted /s | denials /s | Redis CPU µs / pair | calls / pair | Redis CPU µs / decision | script calls / pair | script µs / pair | Redis cmds / pair | Redis CPU % | errors |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	f := func(v float64, prec int) string {
		if v != v { // NaN
			return "-"
		}
		return strconv.FormatFloat(v, 'f', prec, 64)
	}
	per := func(x float64, n int64) float64 {
		if n <= 0 {
			return nan()
		}
		return x / float64(n)
	}
	itoa := func(n int) string {
		if n <= 0 {
			return ""
		}
		return strconv.Itoa(n)
	}
	var tops []string
	for _, r := range c.rows {
		eng := r.engine
		if r.label != "" {
			eng = r.label
		}
		sec := r.elapsed.Seconds()
		rate := f(float64(r.admitted)/sec, 0) + " " + r.unit
		if r.unit == "-" {
			rate = "-"
		}
		if r.calls < 0 { // redis-benchmark's own figure only
			fmt.Fprintf(&b, "| %s | %s | | %d | %s | | | | | | | | | |\n", r.regime, eng, r.goroutines, rate)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n",
			r.regime, eng, itoa(r.instances), itoa(r.goroutines), rate,
			f(float64(r.denied)/sec, 0),
			f(per(r.cpu*1e6, r.admitted), 2),
			f(per(float64(r.calls), r.admitted), 3),
			f(per(r.cpu*1e6, r.admitted+r.denied), 2),
			f(per(float64(r.scripts), r.admitted), 3),
			f(per(float64(r.scriptUsec), r.admitted), 2),
			f(per(float64(r.cmds), r.admitted), 1),
			f(100*r.cpu/sec, 0),
			r.errs)
		if r.top != "" {
			tops = append(tops, fmt.Sprintf("- %s, %s: %s", r.regime, eng+" "+itoa(r.instances)+"×"+itoa(r.goroutines), r.top))
		}
	}
	b.WriteString("\nPer pair: per admitted acquire+settle pair (per call for redis-benchmark). Per decision: per acquire attempt, admitted or denied. " +
		"Calls: commands the clients sent (round trips, pipelined ones each counted). Script calls and µs: EVALSHA/EVAL in INFO commandstats. " +
		"Redis cmds: every command Redis ran, those inside scripts included. Redis CPU: used_cpu_sys + used_cpu_user of the server over the span.\n\n" +
		"Most frequent commands Redis ran (commandstats, INFO excluded):\n\n" + strings.Join(tops, "\n") + "\n")
	fmt.Print("\n" + b.String() + "\n")
}

func nan() float64 { var z float64; return z / z }

func infoField(info, key string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+":"); ok {
			return v
		}
	}
	return "?"
}
