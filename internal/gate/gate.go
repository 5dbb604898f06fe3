// Package gate is the governed model call: one call to a provider,
// admitted through the meter (tokens counted and reserved before it,
// GPU time and cost checked), made, measured and settled with what it
// actually used on every exit path: success, provider error, timeout,
// cancellation. The flow runtime's model nodes go through it; so will the
// OpenAI-compatible endpoint and the LangFlow front. It depends on the
// domain below it (metering, quota, llm) and on nothing that calls it.
package gate

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
)

// DefaultMaxTokens is a call's output allowance when the caller asks none.
const DefaultMaxTokens = 1024

// Meter admits and settles governed work (*metering.Meter).
type Meter interface {
	Acquire(ctx context.Context, who metering.Who, kind string, ask quota.Ask, ttl time.Duration) (*metering.Admission, error)
	Settle(ctx context.Context, ticketID string, u quota.Usage, model string) (quota.Settlement, error)
}

// Gate makes governed model calls.
type Gate struct {
	Meter Meter
	// OnModelCall, when set, is told each admitted call's model, provider,
	// outcome ("ok" or "error") and tokens.
	OnModelCall func(model, provider, outcome string, input, output int)
}

// Call is one governed model call.
type Call struct {
	Who metering.Who
	// Kind is the usage event's kind ("model_call").
	Kind  string
	Model *llm.Model
	// Request is the call; its MaxTokens is the output asked (0:
	// DefaultMaxTokens), capped by MaxTokensPerCall (0: no cap) and the
	// model's context window, and clamped to what the budgets allow.
	Request          llm.Request
	MaxTokensPerCall int64
	// Field and Subject name the caller's setting in an error about the
	// call itself ("nodes.n1", "node n1").
	Field, Subject string
	// OnChunk, when set, has the answer streamed to it as it comes.
	OnChunk func(chunk string)
}

// Result is what a call did, whether or not it succeeded.
type Result struct {
	Response llm.Response
	// Admitted reports that the meter admitted the call; Usage is then
	// what was settled for it.
	Admitted bool
	Usage    quota.Usage
	// SettleErr is a settle that still failed after RetrySettle's minute:
	// the call's reservation stands until its ticket expires. The caller
	// logs it with its own context.
	SettleErr error
}

// Do makes call c: it counts the prompt, reserves prompt plus output
// allowance (down to a 16-token answer) and checks GPU time and cost
// through the meter, calls the provider with the output clamped to what
// was admitted, and settles the usage the provider reported (for GPU
// models the compute time, else the call's wall time) whatever happened.
// A refusal is the meter's error (a *quota.Denial for a limit); a
// provider error is returned as it is, with the settled Result.
func (g *Gate) Do(ctx context.Context, c Call) (Result, error) {
	var out Result
	m := c.Model
	cfg := m.Config()
	req := c.Request
	in := m.CountRequest(req)
	maxOut := DefaultMaxTokens
	if req.MaxTokens > 0 {
		maxOut = req.MaxTokens
	}
	if cp := c.MaxTokensPerCall; cp > 0 && int64(maxOut) > cp {
		maxOut = int(cp)
	}
	if cw := cfg.ContextWindow; cw > 0 && in+maxOut > cw {
		maxOut = cw - in
		if maxOut <= 0 {
			return out, errs.Field(errs.Unprocessable, c.Field,
				"%s: the prompt (%d tokens) does not fit model %s's context window of %d", c.Subject, in, m.Name(), cw)
		}
	}
	ask := quota.Ask{
		Tokens:     int64(in + maxOut),
		MinTokens:  int64(in + min(maxOut, 16)),
		CostMicros: m.Cost(llm.Usage{InputTokens: in, OutputTokens: maxOut}),
		Model:      m.Name(),
	}
	if cfg.GPU {
		ask.GPUMillis = 1 // checks that GPU time remains; the actual time is settled
	}
	ttl := time.Minute
	if dl, ok := ctx.Deadline(); ok {
		ttl = time.Until(dl) + time.Minute
	}
	adm, err := g.Meter.Acquire(ctx, c.Who, c.Kind, ask, ttl)
	if err != nil {
		return out, err
	}
	out.Admitted = true
	if adm.Clamped {
		maxOut = int(adm.Tokens) - in
	}
	req.MaxTokens = maxOut
	start := time.Now()
	var resp llm.Response
	if c.OnChunk != nil && len(req.Tools) == 0 {
		resp, err = m.Stream(ctx, req, c.OnChunk)
	} else {
		resp, err = m.Chat(ctx, req)
	}
	wall := time.Since(start)
	u := resp.Usage
	gpu := int64(0)
	if cfg.GPU {
		gpu = u.GPU.Milliseconds()
		if u.GPU == 0 {
			gpu = wall.Milliseconds() // no compute time reported: the call's wall time
		}
		gpu = max(gpu, 1)
	}
	out.Usage = quota.Usage{InputTokens: int64(u.InputTokens), OutputTokens: int64(u.OutputTokens), GPUMillis: gpu, CostMicros: m.Cost(u)}
	// Settle whatever happened: success, provider error, timeout, cancel.
	out.SettleErr = RetrySettle(func() error {
		_, err := g.Meter.Settle(context.WithoutCancel(ctx), adm.ID, out.Usage, m.Name())
		return err
	})
	if g.OnModelCall != nil {
		outcome := "ok"
		if err != nil {
			outcome = "error"
		}
		g.OnModelCall(m.Name(), cfg.Provider, outcome, u.InputTokens, u.OutputTokens)
	}
	out.Response = resp
	return out, err
}

// RetrySettle settles until the usage event is durable: a settle whose
// event the usage store could not take yet answers Unavailable, and is
// tried again (a settle is idempotent) with backoff for up to a minute.
func RetrySettle(settle func() error) error {
	wait := 50 * time.Millisecond
	deadline := time.Now().Add(time.Minute)
	for {
		err := settle()
		if err == nil || !errs.Is(err, errs.Unavailable) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
	}
}
