package llm

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
)

// The router chooses, for one call, the order in which a model's
// deployments and its fallback models are tried. It does not call them:
// the governed-call pipeline runs the retry loop with Route, Report,
// Retryable and RouterOptions, because it must settle quota between
// attempts.

// RouterOptions are the routing policy: when a deployment is cooled down,
// and how the caller's retry loop retries and times out attempts. Field
// names in Validate's errors are those of the config's routing section.
type RouterOptions struct {
	// CooldownAfter is how many consecutive retryable failures cool a
	// deployment down; 0 never does.
	CooldownAfter int
	// CooldownFor is how long a cooled-down deployment is tried only after
	// every healthy candidate.
	CooldownFor time.Duration
	// Retries is how many more attempts one deployment gets after a
	// retryable failure before the caller moves to the next candidate.
	Retries int
	// Backoff is the wait before the first retry on a deployment; each
	// further retry waits twice as long (see Delay). Moving to another
	// candidate waits for nothing.
	Backoff time.Duration
	// AttemptTimeout bounds one attempt (until the answer starts, for a
	// stream: the caller decides); 0 means only the caller's own deadline.
	AttemptTimeout time.Duration
}

// DefaultRouterOptions are the options NewRegistry uses: cool a deployment
// down for 30 s after 3 consecutive retryable failures; retry each
// deployment once after 200 ms; no attempt timeout.
func DefaultRouterOptions() RouterOptions {
	return RouterOptions{CooldownAfter: 3, CooldownFor: 30 * time.Second, Retries: 1, Backoff: 200 * time.Millisecond}
}

// maxDelay caps Delay, so that doubling never makes a caller wait minutes.
const maxDelay = time.Minute

// Validate checks the options, naming the field as "routing.cooldown_for".
func (o RouterOptions) Validate() error {
	switch {
	case o.CooldownAfter < 0 || o.CooldownAfter > 1000:
		return invalid("routing.cooldown_after", "%d is not between 0 (never) and 1000", o.CooldownAfter)
	case o.CooldownFor <= 0 || o.CooldownFor > time.Hour:
		return invalid("routing.cooldown_for", "%s is not between 0 and 1h", o.CooldownFor)
	case o.Retries < 0 || o.Retries > 10:
		return invalid("routing.retries", "%d is not between 0 and 10", o.Retries)
	case o.Backoff < 0 || o.Backoff > maxDelay:
		return invalid("routing.backoff", "%s is not between 0 and %s", o.Backoff, maxDelay)
	case o.AttemptTimeout < 0 || o.AttemptTimeout > time.Hour:
		return invalid("routing.attempt_timeout", "%s is not between 0 (none) and 1h", o.AttemptTimeout)
	}
	return nil
}

// Delay is the wait before retry n (1 for the first) on the same
// deployment: Backoff doubled n-1 times, at most a minute.
func (o RouterOptions) Delay(n int) time.Duration {
	if n < 1 || o.Backoff <= 0 {
		return 0
	}
	d := o.Backoff
	for i := 1; i < n && d < maxDelay; i++ {
		d *= 2
	}
	return min(d, maxDelay)
}

// RouterOptions returns the registry's routing policy.
func (r *Registry) RouterOptions() RouterOptions { return r.opts }

// RouteTags say who is calling, for deployments dedicated to a plan or a
// tenant.
type RouteTags struct {
	Tenant string // tenant id
	Plan   string // the tenant's plan name
}

// route is one model's deployments, split for Route, and its fallbacks.
type route struct {
	deps      []*Model // table order; deps[0] is what Lookup returns
	dedicated []*Model // those with DedicatedTo
	open      []*Model // the others
	fallbacks []string // ModelConfig.Fallbacks
	// chain is this route then every model reachable through fallbacks,
	// breadth first, each once; size counts their deployments.
	chain []*route
	size  int
}

// chainFallbacks fills each route's chain. Breadth first, so a model's own
// fallbacks come, in the order written, before theirs.
func (r *Registry) chainFallbacks() {
	for _, rt := range r.byName {
		rt.chain = []*route{rt}
		seen := map[*route]bool{rt: true}
		for i := 0; i < len(rt.chain); i++ {
			for _, name := range rt.chain[i].fallbacks {
				if fb := r.byName[name]; !seen[fb] {
					seen[fb] = true
					rt.chain = append(rt.chain, fb)
				}
			}
		}
		for _, c := range rt.chain {
			rt.size += len(c.deps)
		}
	}
}

// Route returns the deployments to try for one call to the model called
// name, best first. For the model and then each of its fallback models
// (ModelConfig.Fallbacks, then theirs, breadth first, each model once):
// the deployments dedicated to this caller (DedicatedTo matching
// "tenant:"+tags.Tenant or "plan:"+tags.Plan), then the undedicated ones,
// each group in a random order drawn by weight, so that traffic splits as
// the weights say. A deployment dedicated to someone else is never
// returned. Deployments cooling down (see Report) come after every healthy
// candidate of the whole chain, in the same order among themselves: a last
// resort, not an exclusion.
//
// Every candidate's Name is its own model's, which for a fallback is not
// name: quota, prices and usage follow the model that served the call.
//
// An unknown name is an errs.Invalid error on the field "model", as
// Lookup's; a model none of whose deployments the caller may use is an
// errs.Forbidden error on "model", whatever its fallbacks offer.
func (r *Registry) Route(name string, tags RouteTags) ([]*Model, error) {
	rt, err := r.route(name)
	if err != nil {
		return nil, err
	}
	out := make([]*Model, 0, rt.size)
	// Cooling deployments wait here; a model rarely has more than eight.
	var coolBuf [8]*Model
	cool := coolBuf[:0]
	var now int64 // read from the clock only if some deployment has cooled
	for i, c := range rt.chain {
		n, nc := len(out), len(cool)
		if len(c.dedicated) > 0 && (tags.Tenant != "" || tags.Plan != "") {
			out, cool = r.appendGroup(out, cool, c.dedicated, &tags, &now)
		}
		out, cool = r.appendGroup(out, cool, c.open, nil, &now)
		if i == 0 && len(out) == n && len(cool) == nc {
			return nil, errs.Field(errs.Forbidden, "model", "model %q is not available to this caller", name)
		}
	}
	return append(out, cool...), nil
}

// appendGroup appends to out the deployments of group the caller may use
// (all of them when tags is nil; else those dedicated to tags) in a
// weighted random order, moving those cooling down to cool.
func (r *Registry) appendGroup(out, cool, group []*Model, tags *RouteTags, now *int64) ([]*Model, []*Model) {
	start := len(out)
	for _, m := range group {
		if tags == nil || m.dedicatedToCaller(tags) {
			out = append(out, m)
		}
	}
	r.shuffle(out[start:])
	// Stable partition: healthy ones stay, in their drawn order.
	k := start
	for _, m := range out[start:] {
		if until := m.health.until.Load(); until != 0 {
			if *now == 0 {
				*now = r.now().UnixNano()
			}
			if *now < until {
				cool = append(cool, m)
				continue
			}
		}
		out[k] = m
		k++
	}
	return out[:k], cool
}

func (m *Model) dedicatedToCaller(tags *RouteTags) bool {
	for _, d := range m.dedication {
		if d.plan && tags.Plan != "" && d.id == tags.Plan || !d.plan && tags.Tenant != "" && d.id == tags.Tenant {
			return true
		}
	}
	return false
}

// shuffle orders s at random by weight: each place is drawn from those
// left with probability weight ÷ their total weight.
func (r *Registry) shuffle(s []*Model) {
	if len(s) < 2 {
		return
	}
	total := 0
	for _, m := range s {
		total += m.weight
	}
	for i := 0; i < len(s)-1; i++ {
		x := r.intN(total)
		j := i
		for ; j < len(s)-1; j++ {
			if x -= s[j].weight; x < 0 {
				break
			}
		}
		s[i], s[j] = s[j], s[i]
		total -= s[i].weight
	}
}

func (r *Registry) intN(n int) int {
	if r.rnd == nil {
		return rand.IntN(n)
	}
	r.rndMu.Lock()
	defer r.rndMu.Unlock()
	return r.rnd.IntN(n)
}

// health is one deployment's recent record.
type health struct {
	fails atomic.Int64 // consecutive retryable failures since the last success or cooldown
	until atomic.Int64 // end of the current or last cooldown, Unix ns; 0 never cooled
}

// Report records the outcome of one attempt on deployment m: nil for a
// success, which clears its count of failures; a Retryable error counts
// one, and the CooldownAfter-th in a row cools the deployment down for
// CooldownFor (and starts the count again). Other errors (a 400, an
// invalid request) say nothing about the deployment's health and change
// nothing. A cooldown runs its course: a success during it (m tried as a
// last resort) clears the count but does not end it.
//
// Report only what the deployment did: an attempt cut short because the
// caller went away, or by the caller's own deadline rather than
// AttemptTimeout, is not the deployment's failure.
func (r *Registry) Report(m *Model, err error) {
	h := m.health
	if err == nil {
		if h.fails.Load() != 0 { // no store, no cache-line traffic, on the common path
			h.fails.Store(0)
		}
		return
	}
	if r.opts.CooldownAfter <= 0 || !Retryable(err) {
		return
	}
	if h.fails.Add(1) >= int64(r.opts.CooldownAfter) {
		h.fails.Store(0)
		h.until.Store(r.now().Add(r.opts.CooldownFor).UnixNano())
	}
}

// CoolingDown reports whether m is cooling down now.
func (r *Registry) CoolingDown(m *Model) bool {
	until := m.health.until.Load()
	return until != 0 && r.now().UnixNano() < until
}

// Retryable reports whether the same call may succeed on a later attempt
// or another deployment: a *ProviderError marked Retryable (429 other than
// out-of-credit, 408, 5xx, a failed connection, a stream cut off) and a
// deadline (context.DeadlineExceeded, as a per-attempt timeout ends). Not
// a cancellation (the caller went away) and not any other 4xx: the
// request itself is at fault, and another deployment would refuse it too.
//
// A deadline that is the caller's own looks the same here; the retry loop
// must stop when its caller's context is done, whatever Retryable says.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if pe, ok := errors.AsType[*ProviderError](err); ok {
		if pe.Status >= 400 && pe.Status < 500 && pe.Status != http.StatusTooManyRequests && pe.Status != http.StatusRequestTimeout {
			return false
		}
		return pe.Retryable
	}
	return errors.Is(err, context.DeadlineExceeded)
}
