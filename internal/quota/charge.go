package quota

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrUnavailable marks a backend that cannot be reached (a shared store
// down or too slow). Callers fail over on it; it is never a denial.
var ErrUnavailable = errors.New("quota backend unavailable")

// Charger records use that happened outside this backend's tickets: work
// admitted by a local fallback while the shared backend was unreachable,
// or a settlement that arrived after its ticket expired. It is idempotent
// by id: charging the same id twice changes nothing.
type Charger interface {
	Charge(ctx context.Context, id string, chain []Scope, u Usage, at time.Time) error
}

var _ Charger = (*Memory)(nil)

// chargeRetention is how long Memory remembers charge ids.
const chargeRetention = 48 * time.Hour

// Charge implements Charger: u is added to the budgets of every scope of
// chain for the windows that hold at, when those windows are still
// current (use in a window that has ended no longer limits anything).
func (e *Memory) Charge(_ context.Context, id string, chain []Scope, u Usage, at time.Time) error {
	if id == "" {
		return fmt.Errorf("charge: empty id: %w", ErrInvalid)
	}
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.GPUMillis < 0 || u.CostMicros < 0 {
		return fmt.Errorf("charge %s: negative usage: %w", id, ErrInvalid)
	}
	wall := e.now().UnixNano()
	e.mu.Lock()
	defer e.mu.Unlock()
	now, err := e.begin(wall)
	if err != nil {
		return err
	}
	if e.charged == nil {
		e.charged = map[string]int64{}
	}
	if _, done := e.charged[id]; done {
		return nil
	}
	states, err := e.resolve(chain, now)
	if err != nil {
		return err
	}
	ts := at.UnixNano()
	tokens := sadd(u.InputTokens, u.OutputTokens)
	for _, st := range states {
		if ts >= st.dayStart && ts < st.dayEnd {
			st.tokensDay = sadd(st.tokensDay, tokens)
		}
		if ts >= st.monthStart && ts < st.monthEnd {
			st.tokensMonth = sadd(st.tokensMonth, tokens)
			st.gpuMillis = sadd(st.gpuMillis, u.GPUMillis)
			st.costMicros = sadd(st.costMicros, u.CostMicros)
		}
	}
	e.created = e.created[:0]
	e.charged[id] = now
	if len(e.charged) > 1<<16 {
		for k, t := range e.charged {
			if now-t > int64(chargeRetention) {
				delete(e.charged, k)
			}
		}
	}
	return nil
}
