// Package gate is the governed model call: one call to a provider,
// admitted through the meter (tokens counted and reserved before it,
// GPU time and cost checked), routed over the model's deployments with
// retries, backoff and fallbacks, measured, and settled with what it
// actually used on every exit path: success, provider error, timeout,
// cancellation, a client gone mid-stream. The flow runtime's model nodes
// and the OpenAI-compatible gateway go through it; so will the LangFlow
// front. It depends on the domain below it (metering, quota, llm) and on
// nothing that calls it.
package gate

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/usage"
)

// DefaultMaxTokens is a call's output allowance when the caller asks none.
const DefaultMaxTokens = 1024

// Meter admits and settles governed work (*metering.Meter). Acquire's ttl
// may be metering.TTLRun: the chain's run timeout, which the meter knows.
type Meter interface {
	Acquire(ctx context.Context, who metering.Who, kind string, ask quota.Ask, ttl time.Duration) (*metering.Admission, error)
	SettleWith(ctx context.Context, ticketID string, u quota.Usage, model string, annotate func(*usage.Event)) (quota.Settlement, error)
}

// queuedSettler settles without waiting for the usage event's commit
// (*metering.Meter).
type queuedSettler interface {
	SettleQueued(ctx context.Context, ticketID string, u quota.Usage, model string, annotate func(*usage.Event)) (quota.Settlement, error)
}

// Health is told how each attempt on a deployment went, so that a
// deployment failing again and again is cooled down (*llm.Registry).
type Health interface {
	Report(m *llm.Model, err error)
}

// Retry says how often a call is tried again, and after how long.
type Retry struct {
	// Retries is how many more times one deployment is tried after a
	// retryable failure before the call moves on to the next candidate.
	Retries int
	// Backoff is the wait before the first retry, doubled for each next
	// one (a provider's Retry-After, when longer and under a minute, wins).
	Backoff time.Duration
	// AttemptTimeout bounds how long an attempt may go without the
	// answer starting (0: no bound beyond the caller's context).
	AttemptTimeout time.Duration
}

// Gate makes governed model calls.
type Gate struct {
	Meter Meter
	// Health, when set, hears every attempt's outcome.
	Health Health
	Retry  Retry
	// OnModelCall, when set, is told each admitted call's model, provider,
	// outcome ("ok" or "error") and tokens.
	OnModelCall func(model, provider, outcome string, input, output int)
	// Log, when set, gets one line per governed call ("governed call").
	Log *slog.Logger
	// Sleep waits between attempts (nil: a timer that the context cuts).
	Sleep func(ctx context.Context, d time.Duration) error
	// Engine, when set, enforces each deployment's provider rpm and tpm.
	Engine Engine

	providers providerLimits
}

// Call is one governed model call.
type Call struct {
	Who metering.Who
	// Kind is the usage event's kind ("model_call", "chat_completion").
	Kind string
	// Candidates are the deployments to try, in order (llm.Registry
	// Route); Model alone stands for one candidate. The first one's model
	// is the one asked for: its prices and token counting price the ask.
	Model      *llm.Model
	Candidates []*llm.Model
	// Request is the call. Its MaxTokens is the output asked (0:
	// MaxTokensDefault), capped by MaxTokensPerCall (0: no cap) and the
	// model's context window, and clamped to what the budgets allow.
	Request llm.Request
	// InputTokens, when > 0, is the prompt's size as the caller counted it
	// (a passed-through request Sluice does not rebuild); else Request is
	// counted.
	InputTokens int
	// Choices is how many answers the call asks for (OpenAI's n): the
	// output allowance is reserved for each. 0 is 1.
	Choices          int
	MaxTokensPerCall int64
	// MaxTokensDefault is the output allowance when the request asks none
	// (0: DefaultMaxTokens).
	MaxTokensDefault int
	// Requests is what the call counts against request rates: 1 for a
	// call that is a request of its own (the gateway's), 0 for one inside
	// an admitted run. Concurrency has such a call hold a concurrency slot
	// until it is settled (a run's calls are inside the run's slot).
	Requests    int64
	Concurrency bool
	// NoOutput marks a call that produces no tokens (embeddings): only the
	// input is reserved.
	NoOutput bool
	// TTL is how long the reservation lives unsettled (0: the context's
	// deadline plus a minute, or a minute).
	TTL time.Duration
	// QueueUsage settles without waiting for the usage event's commit
	// (metering.Meter.SettleQueued), when the operator chose it.
	QueueUsage bool
	// Field and Subject name the caller's setting in an error about the
	// call itself ("nodes.n1", "node n1").
	Field, Subject string
	// OnChunk, when set, has the answer streamed to it as it comes (for
	// the default Invoke).
	OnChunk func(chunk string)
	// Invoke makes one attempt on a deployment (nil: Chat or Stream with
	// Request). It returns the attempt's usage in its Response even when
	// it fails, and Committed once any of the answer reached the caller,
	// after which the call is never tried again.
	Invoke func(ctx context.Context, a Attempt) (Outcome, error)
	// OnAdmit, when set, hears the admission before the first attempt
	// (the caller's response headers).
	OnAdmit func(*metering.Admission)
	// For the call log: the request id, the caller's key (its id and
	// visible prefix, never the secret) and (only when the operator
	// enabled it) the prompt.
	RequestID, KeyID, KeyPrefix, Prompt string
}

// Attempt is one try on one deployment.
type Attempt struct {
	Model *llm.Model
	// MaxTokens is the output allowed for this attempt (per choice).
	MaxTokens int
	// Started, called when the answer begins to arrive, ends the
	// attempt's timeout and marks the time to first token.
	Started func()
}

// Outcome is what an attempt did.
type Outcome struct {
	Response  llm.Response
	Committed bool
}

// Result is what a call did, whether or not it succeeded.
type Result struct {
	Response llm.Response
	// Admitted reports that the meter admitted the call; Usage is then
	// what was settled for it, over all its attempts.
	Admitted  bool
	Admission *metering.Admission
	Usage     quota.Usage
	// Model is the deployment that answered (or was tried last); Attempts
	// counts the tries.
	Model    *llm.Model
	Attempts int
	// Committed reports that the answer began to reach the caller (an
	// Invoke said so): an error then is already the caller's to see, in
	// the answer itself.
	Committed bool
	// FirstToken is the time from admission to the answer's start (0
	// when it never started).
	FirstToken time.Duration
	// SettleErr is a settle that still failed after RetrySettle's minute:
	// the call's reservation stands until its ticket expires. The caller
	// logs it with its own context.
	SettleErr error
}

// Do makes call c: it counts the prompt, reserves prompt plus output
// allowance (down to a 16-token answer) and checks GPU time and cost
// through the meter, tries the candidates in order with the output clamped
// to what was admitted (retrying and falling back on retryable failures
// until the answer has begun to reach the caller), and settles the usage
// the providers reported over every attempt (for GPU models the compute
// time, else the wall time) whatever happened. A refusal is the meter's
// error (a *quota.Denial for a limit); a provider error is returned as it
// is, with the settled Result.
func (g *Gate) Do(ctx context.Context, c Call) (Result, error) {
	var out Result
	start := time.Now()
	cands := c.Candidates
	if len(cands) == 0 {
		cands = []*llm.Model{c.Model}
	}
	m := cands[0]
	cfg := m.Config()
	in := c.InputTokens
	if in <= 0 {
		in = m.CountRequest(c.Request)
	}
	maxOut := c.MaxTokensDefault
	if maxOut <= 0 {
		maxOut = DefaultMaxTokens
	}
	if c.Request.MaxTokens > 0 {
		maxOut = c.Request.MaxTokens
	}
	if cp := c.MaxTokensPerCall; cp > 0 && int64(maxOut) > cp {
		maxOut = int(cp)
	}
	if c.NoOutput {
		maxOut = 0
	}
	if cw := cfg.ContextWindow; cw > 0 && in+maxOut > cw {
		maxOut = cw - in
		if maxOut <= 0 {
			err := errs.Field(errs.Unprocessable, c.Field,
				"%s: the prompt (%d tokens) does not fit model %s's context window of %d", c.Subject, in, m.Name(), cw)
			g.logCall(ctx, c, &out, start, "invalid", err)
			return out, err
		}
	}
	n := max(c.Choices, 1)
	ask := quota.Ask{
		Tokens:      int64(in + n*maxOut),
		MinTokens:   int64(in + n*min(maxOut, 16)),
		Requests:    c.Requests,
		Concurrency: c.Concurrency,
		CostMicros:  m.Cost(llm.Usage{InputTokens: in, OutputTokens: n * maxOut}),
		Model:       m.Name(),
	}
	if cfg.GPU {
		ask.GPUMillis = 1 // checks that GPU time remains; the actual time is settled
	}
	ttl := c.TTL
	if dl, ok := ctx.Deadline(); ok && ttl <= 0 {
		ttl = time.Until(dl) + time.Minute
	}
	if ttl <= 0 {
		ttl = time.Minute
	}
	adm, err := g.Meter.Acquire(ctx, c.Who, c.Kind, ask, ttl)
	if err != nil {
		g.logCall(ctx, c, &out, start, "denied", err)
		return out, err
	}
	out.Admitted, out.Admission = true, adm
	if adm.Clamped {
		maxOut = (int(adm.Tokens) - in) / n
	}
	if c.OnAdmit != nil {
		c.OnAdmit(adm)
	}
	admitted := time.Now()
	var total quota.Usage
	var resp llm.Response
	for _, dep := range cands {
		var done bool
		resp, err, done = g.tryDeployment(ctx, c, dep, in, maxOut, &out, &total, admitted)
		if done {
			break
		}
	}
	out.Usage = total
	// Settle whatever happened: success, provider error, timeout, cancel.
	if out.Model == nil {
		out.Model = m // no deployment could be tried
		if err == nil {
			err = errs.Field(errs.Unprocessable, c.Field, "%s: no deployment of model %s can take a prompt of %d tokens", c.Subject, m.Name(), in)
		}
	}
	served := out.Model
	out.SettleErr = RetrySettle(func() error {
		annotate := func(ev *usage.Event) { ev.Deployment = deploymentOf(served) }
		if q, ok := g.Meter.(queuedSettler); ok && c.QueueUsage {
			_, err := q.SettleQueued(context.WithoutCancel(ctx), adm.ID, out.Usage, served.Name(), annotate)
			return err
		}
		_, err := g.Meter.SettleWith(context.WithoutCancel(ctx), adm.ID, out.Usage, served.Name(), annotate)
		return err
	})
	if g.OnModelCall != nil {
		outcome := "ok"
		if err != nil {
			outcome = "error"
		}
		g.OnModelCall(served.Name(), served.Config().Provider, outcome, int(total.InputTokens), int(total.OutputTokens))
	}
	out.Response = resp
	g.logCall(ctx, c, &out, start, "admitted", err)
	return out, err
}

// tryDeployment makes the attempts on one deployment: the first, and
// retries with backoff while they fail in a way a retry may mend. done
// says the call is over (answered, failed for good, or gone too far to be
// tried elsewhere).
func (g *Gate) tryDeployment(ctx context.Context, c Call, dep *llm.Model, in, maxOut int, out *Result, total *quota.Usage, admitted time.Time) (llm.Response, error, bool) {
	if cw := dep.Config().ContextWindow; cw > 0 && in+maxOut > cw {
		maxOut = cw - in
		if maxOut <= 0 {
			return llm.Response{}, nil, false // this one cannot take the prompt: the next may
		}
	}
	wait := g.Retry.Backoff
	var resp llm.Response
	var err error
	for try := 0; try <= max(g.Retry.Retries, 0); try++ {
		if try > 0 {
			d := wait
			var pe *llm.ProviderError
			if errors.As(err, &pe) && pe.RetryAfter > d && pe.RetryAfter < time.Minute {
				d = pe.RetryAfter
			}
			if g.sleep(ctx, d) != nil {
				return resp, err, true
			}
			wait *= 2
		}
		var pid string
		pid, err = g.takeProvider(ctx, dep, int64(in+max(c.Choices, 1)*maxOut))
		if err != nil {
			if retryable(err) {
				return resp, err, false // at its provider's limit: the next deployment
			}
			return resp, err, true
		}
		out.Model = dep
		out.Attempts++
		var o timedOutcome
		o, err = g.attempt(ctx, c, dep, maxOut, out, admitted)
		g.settleProvider(ctx, pid, o.Response.Usage)
		resp = o.Response
		out.Committed = o.Committed
		u := o.Response.Usage
		total.InputTokens += int64(u.InputTokens)
		total.OutputTokens += int64(u.OutputTokens)
		total.CostMicros += dep.Cost(u)
		if dep.Config().GPU {
			gpu := u.GPU.Milliseconds()
			if u.GPU == 0 {
				gpu = o.wall.Milliseconds() // no compute time reported: the call's wall time
			}
			total.GPUMillis += max(gpu, 1)
		}
		if g.Health != nil && ctx.Err() == nil {
			g.Health.Report(dep, err)
		}
		if err == nil || o.Committed || ctx.Err() != nil || !retryable(err) {
			return resp, err, true
		}
	}
	return resp, err, false
}

// attempt makes one try, bounded by the attempt timeout until the answer
// starts.
func (g *Gate) attempt(ctx context.Context, c Call, dep *llm.Model, maxOut int, out *Result, admitted time.Time) (timedOutcome, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var timer *time.Timer
	if g.Retry.AttemptTimeout > 0 {
		timer = time.AfterFunc(g.Retry.AttemptTimeout, func() { cancel(errAttemptTimeout) })
	}
	started := func() {
		if timer != nil {
			timer.Stop()
		}
		if out.FirstToken == 0 {
			out.FirstToken = max(time.Since(admitted), 1)
		}
	}
	a := Attempt{Model: dep, MaxTokens: maxOut, Started: started}
	t0 := time.Now()
	invoke := c.Invoke
	if invoke == nil {
		invoke = func(ctx context.Context, a Attempt) (Outcome, error) { return defaultInvoke(ctx, c, a) }
	}
	o, err := invoke(actx, a)
	if timer != nil {
		timer.Stop()
	}
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(actx), errAttemptTimeout) {
		err = &llm.ProviderError{Provider: dep.Config().Provider, Message: "no answer within the attempt timeout of " + g.Retry.AttemptTimeout.String(),
			Retryable: true, Err: context.DeadlineExceeded}
	}
	return timedOutcome{Outcome: o, wall: time.Since(t0)}, err
}

var errAttemptTimeout = errors.New("attempt timeout")

type timedOutcome struct {
	Outcome
	wall time.Duration
}

// defaultInvoke calls the deployment with c.Request through the llm
// Provider interface, streaming to c.OnChunk when set.
func defaultInvoke(ctx context.Context, c Call, a Attempt) (Outcome, error) {
	req := c.Request
	req.MaxTokens = a.MaxTokens
	if c.OnChunk != nil && len(req.Tools) == 0 {
		sent := false
		resp, err := a.Model.Stream(ctx, req, func(chunk string) {
			if !sent {
				sent = true
				a.Started()
			}
			c.OnChunk(chunk)
		})
		return Outcome{Response: resp, Committed: sent}, err
	}
	resp, err := a.Model.Chat(ctx, req)
	if err == nil {
		a.Started()
	}
	return Outcome{Response: resp}, err
}

// retryable reports a failure another try (or another deployment) may
// mend: the provider's rate limit, overload, 5xx, a lost connection, no
// answer in time.
func retryable(err error) bool {
	var pe *llm.ProviderError
	return errors.As(err, &pe) && pe.Retryable && !errors.Is(err, context.Canceled)
}

func (g *Gate) sleep(ctx context.Context, d time.Duration) error {
	if g.Sleep != nil {
		return g.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// logCall writes the call's line: who, what, the decision and what it
// used, never the prompt unless the operator enabled it (c.Prompt).
func (g *Gate) logCall(ctx context.Context, c Call, out *Result, start time.Time, decision string, err error) {
	if g.Log == nil {
		return
	}
	attrs := make([]slog.Attr, 0, 20)
	if c.RequestID != "" {
		attrs = append(attrs, slog.String("request_id", c.RequestID))
	}
	attrs = append(attrs, slog.String("tenant", c.Who.TenantID), slog.String("user", c.Who.UserID))
	if c.Who.ProjectID != "" {
		attrs = append(attrs, slog.String("project", c.Who.ProjectID))
	}
	if c.KeyID != "" {
		attrs = append(attrs, slog.String("key", c.KeyID))
	}
	if c.KeyPrefix != "" {
		attrs = append(attrs, slog.String("key_prefix", c.KeyPrefix))
	}
	model := c.Model
	if len(c.Candidates) > 0 {
		model = c.Candidates[0]
	}
	attrs = append(attrs, slog.String("kind", c.Kind))
	if model != nil {
		attrs = append(attrs, slog.String("model", model.Name()))
	}
	attrs = append(attrs, slog.String("decision", decision))
	if out.Model != nil {
		attrs = append(attrs, slog.String("deployment", deploymentOf(out.Model)), slog.Int("attempts", out.Attempts))
	}
	status := "ok"
	if err != nil {
		status = string(errs.CodeOf(err))
		if errors.Is(err, context.Canceled) {
			status = "cancelled"
		}
		var d *quota.Denial
		if errors.As(err, &d) {
			attrs = append(attrs, slog.String("dimension", d.Dimension.String()), slog.String("scope", d.Scope))
		}
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	attrs = append(attrs, slog.String("status", status),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000))
	if out.FirstToken > 0 {
		attrs = append(attrs, slog.Float64("ttft_ms", float64(out.FirstToken.Microseconds())/1000))
	}
	if out.Admitted {
		attrs = append(attrs, slog.Int64("input_tokens", out.Usage.InputTokens), slog.Int64("output_tokens", out.Usage.OutputTokens),
			slog.Int64("cost_micros", out.Usage.CostMicros))
		if out.Usage.GPUMillis > 0 {
			attrs = append(attrs, slog.Int64("gpu_ms", out.Usage.GPUMillis))
		}
	}
	if c.Prompt != "" {
		attrs = append(attrs, slog.String("prompt", c.Prompt))
	}
	g.Log.LogAttrs(ctx, slog.LevelInfo, "governed call", attrs...)
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

// deploymentOf names the deployment m is.
func deploymentOf(m *llm.Model) string { return m.Deployment() }
