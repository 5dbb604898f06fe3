package gate

import (
	"context"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/usage"
)

// DefaultRunTimeout bounds governed work whose scopes set no run_timeout.
const DefaultRunTimeout = metering.DefaultRunTimeout

// Slot is admitted work that holds a concurrency slot for its whole life:
// a flow run, a run proxied to LangFlow. It counted as one request at
// admission; its model calls are governed calls of their own (Do).
type Slot struct {
	*metering.Admission
	// Timeout is how long the work may run: the chain's run_timeout, or
	// DefaultRunTimeout.
	Timeout time.Duration

	g    *Gate
	once sync.Once
	err  error
}

// Admit admits one run for who: a request against the chain's rates and a
// concurrency slot, held (its lease extended to the run's timeout) until
// Release. The chain's caps (run timeout, memory per run, tokens per
// call) come with it.
func (g *Gate) Admit(ctx context.Context, who metering.Who, kind string) (*Slot, error) {
	// Leased at once for the chain's run timeout: a slot seen held is held
	// for the run's whole allowed life.
	adm, err := g.Meter.Acquire(ctx, who, kind, quota.Ask{Requests: 1, Concurrency: true}, metering.TTLRun)
	if err != nil {
		g.logCall(ctx, Call{Who: who, Kind: kind}, &Result{}, time.Now(), "denied", err)
		return nil, err
	}
	s := &Slot{Admission: adm, Timeout: DefaultRunTimeout, g: g}
	if rt := adm.Caps.RunTimeout; rt > 0 {
		s.Timeout = rt
	}
	return s, nil
}

// Release gives the slot back and records the run's usage event (annotate
// adds what the run measured). It is idempotent and survives the caller's
// cancellation; an error is a settle that failed for a minute, for the
// caller to log.
func (s *Slot) Release(ctx context.Context, annotate func(*usage.Event)) error {
	return s.ReleaseUsed(ctx, quota.Usage{}, annotate)
}

// ReleaseUsed is Release charging u, what the run used that no governed
// call of its own settled (tokens a proxied LangFlow run reports).
func (s *Slot) ReleaseUsed(ctx context.Context, u quota.Usage, annotate func(*usage.Event)) error {
	s.once.Do(func() {
		s.err = RetrySettle(func() error {
			_, err := s.g.Meter.SettleWith(context.WithoutCancel(ctx), s.ID, u, "", annotate)
			return err
		})
	})
	return s.err
}
