package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/leasequota"
)

// leaseCall is one admitted ticket as its client saw it: when the acquire
// was sent and answered 200, and when its settle was sent and answered 200.
type leaseCall struct {
	acqSent, acqDone, setSent, setDone time.Time
	tokens                             int64
}

// TestLeaseEngineLimitsHold: three instances with quota_engine: lease on
// one Redis, 64 clients spread over them, one user limited to 600/min
// (burst 50) requests, 5,000 tokens a day and 5 at once. Every bound holds
// as the clients saw it, and once every ticket is settled and the
// instances have stopped, Redis holds no slot and exactly the ledger's
// tokens on every scope.
func TestLeaseEngineLimitsHold(t *testing.T) {
	const (
		burst, perMin = 50, 600
		budget        = 5000
		slots         = 5
		ask           = 70 // tokens per ticket: the rate binds first, then (on a fast machine) the budget
		clients       = 64
	)
	c := startClusterWith(t, `
tenants:
  - name: acme
    projects: [{name: web}]
    users:
      - {name: alice, projects: [web], limits: {requests: {rate: 600/min, burst: 50}, tokens: 5000/day, concurrency: 5}}
`, time.Second, func(cfg *config.Config) { cfg.QuotaEngine = config.QuotaEngineLease })
	urls := make([]string, len(c.apps))
	for i, a := range c.apps {
		urls[i] = a.url
	}

	var (
		mu                    sync.Mutex
		calls                 []leaseCall
		denied, busy, failed  atomic.Int64
		failures              []string
		settledTokens         atomic.Int64
		inFlight, maxInFlight atomic.Int64
		deniedBy              = map[string]int{} // by dimension, for the log
	)
	fail := func(what string, code int, m map[string]any, err error) {
		failed.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 5 {
			failures = append(failures, fmt.Sprintf("%s: %d %v %v", what, code, m, err))
		}
	}
	// The load lasts a few seconds of this machine's clock; nothing is
	// asserted on it.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			at := i % len(urls)
			for ctx.Err() == nil {
				var lc leaseCall
				lc.acqSent = time.Now()
				code, m, err := post(context.Background(), urls[at]+"/api/v1/quota/acquire", c.key, fmt.Sprintf(`{"tokens":%d,"concurrency":true}`, ask))
				lc.acqDone = time.Now()
				switch {
				case err != nil:
					fail("acquire", code, m, err)
					return
				case code == 429:
					denied.Add(1)
					e, _ := m["error"].(map[string]any)
					dim, _ := e["dimension"].(string)
					mu.Lock()
					deniedBy[dim]++
					mu.Unlock()
					time.Sleep(10 * time.Millisecond)
					continue
				case code == 503:
					busy.Add(1) // retried, as Retry-After says
					time.Sleep(20 * time.Millisecond)
					continue
				case code != 200:
					fail("acquire", code, m, err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				n := inFlight.Add(1)
				for old := maxInFlight.Load(); n > old && !maxInFlight.CompareAndSwap(old, n); old = maxInFlight.Load() {
				}
				time.Sleep(100 * time.Millisecond) // the run: long enough for the slots to bind
				inFlight.Add(-1)
				ticket, _ := m["ticket"].(string)
				// Any instance: the engine settles a ticket another one
				// issued through its record in Redis.
				settleAt := urls[rand.IntN(len(urls))]
				body := fmt.Sprintf(`{"ticket":%q,"input_tokens":%d,"output_tokens":%d}`, ticket, ask/3, ask-ask/3)
				lc.setSent = time.Now()
				for try := 0; ; try++ {
					code, m, err = post(context.Background(), settleAt+"/api/v1/quota/settle", c.key, body)
					if err == nil && code == 503 && try < 100 {
						busy.Add(1)
						time.Sleep(20 * time.Millisecond)
						continue
					}
					break
				}
				lc.setDone = time.Now()
				if err != nil || code != 200 {
					fail("settle", code, m, err)
					return
				}
				lc.tokens = ask
				settledTokens.Add(ask)
				mu.Lock()
				calls = append(calls, lc)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d admitted and settled (%d tokens), %d denied %v, %d answers 503 (retried), most in flight seen %d",
		len(calls), settledTokens.Load(), denied.Load(), deniedBy, busy.Load(), maxInFlight.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d calls failed: %v", failed.Load(), failures)
	}
	if len(calls) == 0 || denied.Load() == 0 {
		t.Fatalf("%d admitted, %d denied: the limits were never reached", len(calls), denied.Load())
	}

	// Requests: an admission happened between its acquire's sending and
	// its answer. The admissions whose calls lie wholly within [x, y] all
	// happened within it, so they number at most burst + rate·(y−x), for
	// every x an acquire's sending and y an acquire's answer. (One unit
	// more for the clocks' rounding: Redis's µs, the engine's ns.)
	per := time.Minute / perMin
	for _, a := range calls {
		for _, b := range calls {
			x, y := a.acqSent, b.acqDone
			if y.Before(x) {
				continue
			}
			n := 0
			for _, k := range calls {
				if !k.acqSent.Before(x) && !k.acqDone.After(y) {
					n++
				}
			}
			if bound := burst + int(y.Sub(x)/per) + 1; n > bound {
				t.Fatalf("%d admissions within %s, more than burst + rate·t = %d", n, y.Sub(x), bound)
			}
		}
	}
	// Concurrency: a ticket surely held its slot from its acquire's answer
	// until its settle was sent (the server frees the slot before it
	// answers the settle, so another client may be admitted before that
	// answer arrives: counting to the settle's answer would see six where
	// Redis never held them). At most 5 such spans overlap.
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, k := range calls {
		edges = append(edges, edge{k.acqDone, 1}, edge{k.setSent, -1})
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta // a release before an admission at the same instant
	})
	held, most := 0, 0
	for _, e := range edges {
		held += e.delta
		most = max(most, held)
	}
	if most > slots {
		t.Errorf("%d tickets held at once, limit %d", most, slots)
	}
	if s := settledTokens.Load(); s > budget {
		t.Errorf("settled %d tokens, budget %d", s, budget)
	}

	// Every ticket is settled: stop the instances (each engine returns
	// its leases), then read what Redis holds.
	for i, a := range c.apps {
		if err := a.stop(); err != nil {
			t.Errorf("stopping instance %d: %v", i, err)
		}
	}
	var ledgerTokens int64
	for _, e := range ledger(t, c.dbURL, "") {
		if e.Kind == "metering" {
			ledgerTokens += e.Tokens()
		}
	}
	if ledgerTokens != settledTokens.Load() {
		t.Errorf("ledger holds %d tokens, the clients settled %d", ledgerTokens, settledTokens.Load())
	}
	opts, err := redis.ParseURL(c.redis.url())
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	client := redis.NewClient(opts)
	defer client.Close()
	st, err := leasequota.NewStore(client, leasequota.Options{Prefix: config.Default().RedisPrefix, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Every scope on the global tag (the app puts them all there).
	pattern := st.Tag("") + ":s:*"
	var scopes []string
	for it := client.Scan(context.Background(), 0, pattern, 100).Iterator(); it.Next(context.Background()); {
		scopes = append(scopes, strings.TrimPrefix(it.Val(), st.Tag("")+":s:"))
	}
	slices.Sort(scopes)
	if want := "user/" + c.user; !slices.Contains(scopes, want) {
		t.Fatalf("scopes in Redis %v, want %s among them", scopes, want)
	}
	if len(scopes) != 5 {
		t.Errorf("scopes in Redis %v, want the 5 of alice's chain", scopes)
	}
	for _, k := range scopes {
		s, err := st.Read(context.Background(), leasequota.Scope{Key: k})
		if err != nil {
			t.Fatal(err)
		}
		if n := s.Meters[leasequota.MeterConcurrency].Used; n != 0 {
			t.Errorf("%s: %d slots held after every ticket settled and every instance stopped, want 0", k, n)
		}
		if n := s.Meters[leasequota.MeterTokensDay].Used; n != ledgerTokens {
			t.Errorf("%s: token counter %d, want the ledger's %d (leases: %+v)", k, n, ledgerTokens, s.Leases)
		}
	}
}
